"""Message brokers, one module per transport, and `from_url` to pick one by URL.

`brokers.memory` needs nothing extra; `brokers.redis`, `brokers.azure`,
`brokers.rabbitmq` and `brokers.kafka` import their SDKs and need the
matching extra installed. `from_url` imports only the module its URL names.

```python
import brokers
broker = brokers.from_url("redis+streams://localhost:6379/0", channel_prefix="shop")
```
"""

from brokers._url import BROKER_URL_VARIABLE as BROKER_URL_VARIABLE
from brokers._url import SCHEMES as SCHEMES
from brokers._url import from_env as from_env
from brokers._url import from_url as from_url
from brokers._url import redact as redact

__all__ = ["BROKER_URL_VARIABLE", "SCHEMES", "from_env", "from_url", "redact"]
