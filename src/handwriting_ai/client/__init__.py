"""A typed Python client for the service's HTTP API: `AsyncClient` (asyncio: the Discord bot) and
`Client` (synchronous: `digits read`), with the seeds' retry policy (`policy.py`), typed answers
(`models.py`), `ServiceError` for every failure (`errors.py`) and training events followed over
SSE, resumed with `Last-Event-ID` after a dropped connection (`sse.py`, `stream.py`).

    async with AsyncClient.from_settings(settings) as client:
        reading = await client.read(Path("digit.png"))
        accepted = await client.train({"model_id": "mnist_digitnet_v1", "epochs": 2})
        async for event in client.events(accepted.request_id):
            ...
"""

from handwriting_ai.client.async_client import AsyncClient
from handwriting_ai.client.errors import ServiceError
from handwriting_ai.client.models import Reading, TrainAccepted, TrainStatus
from handwriting_ai.client.sync_client import Client

__all__ = ["AsyncClient", "Client", "Reading", "ServiceError", "TrainAccepted", "TrainStatus"]
