"""Dynamic batching: a bounded queue, batch formation, and the model threads that consume it."""

from inference_engine.batching.batcher import BatchPolicy, BatchResult, DynamicBatcher
from inference_engine.batching.queue import BatchQueue, WorkItem
from inference_engine.batching.worker import ModelWorker

__all__ = ["BatchPolicy", "BatchQueue", "BatchResult", "DynamicBatcher", "ModelWorker", "WorkItem"]
