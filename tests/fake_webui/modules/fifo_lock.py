"""Fake of modules/fifo_lock.py (1.10.1): a lock that wakes waiters in arrival order.

call_queue.queue_lock is one of these (not a threading.Lock): acquire(blocking=True), release(),
context manager. Own implementation with the same behaviour.
"""
import collections
import threading


class FIFOLock:
    def __init__(self):
        self._lock = threading.Lock()
        self._inner_lock = threading.Lock()
        self._waiters = collections.deque()

    def acquire(self, blocking=True):
        with self._inner_lock:
            if self._lock.acquire(False):
                return True
            if not blocking:
                return False
            turn = threading.Event()
            self._waiters.append(turn)
        turn.wait()
        return self._lock.acquire()

    def release(self):
        with self._inner_lock:
            if self._waiters:
                self._waiters.popleft().set()
            self._lock.release()

    def locked(self) -> bool:  # fake-only convenience for tests
        return self._lock.locked()

    __enter__ = acquire

    def __exit__(self, t, v, tb):
        self.release()
