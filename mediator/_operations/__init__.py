"""Running a Service in production: the Service itself, the ``mediator``
command and its worker supervision, the health endpoint, and the AsyncAPI
document and routing diagram of a service (docs/operations.md)."""
