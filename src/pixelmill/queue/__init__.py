"""Task queues: in-process threads (embedded) and Celery (scale-out)."""
