"""The stack's SQS queues: their depths, and re-driving their dead-letter queues.

Every queue of the template redrives a message to its dead-letter queue (DLQ)
after ``maxReceiveCount`` failed deliveries. Once the cause is fixed,
:func:`redrive` moves those messages back to the queue, where the consumer
processes them again. A message is sent twice only when a re-drive stops
between sending it and deleting it from the DLQ. A FIFO queue drops that
duplicate, and a standard queue delivers it again, like any SQS redelivery.

The queue names are the template's, behind the stack's ``QueuePrefix``
(``QUEUE_PREFIX`` in the environment, ``--prefix`` on the command line).
"""

from __future__ import annotations

from resilience.queues.redrive import (
    QUEUE_NAMES,
    QueueDepth,
    RedriveResult,
    queue_depths,
    redrive,
    sqs_client,
)

__all__ = [
    "QUEUE_NAMES",
    "QueueDepth",
    "RedriveResult",
    "queue_depths",
    "redrive",
    "sqs_client",
]
