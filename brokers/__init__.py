"""Message brokers, one module per transport.

`brokers.memory` needs nothing extra; `brokers.redis` and `brokers.azure`
import their SDKs and need the matching extra installed.
"""
