"""The background host stage: a generator of host-side batches run in a thread, consumed in order."""
import queue
import threading


class _Failure:
    def __init__(self, error):
        self.error = error


class Prefetcher:
    """Runs a generator of host-side batches in a background thread (bounded queue, order kept).

    Only host work runs there (reading, tokenising, padding); anything that talks to other hosts or devices
    stays in the caller's thread, so every host issues its collectives in the same order.
    """
    _END = object()

    def __init__(self, generator_fn, depth=2):
        self._queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(generator_fn,), daemon=True,
                                        name="input-host-stage")
        self._thread.start()

    def _put(self, item):
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.05)
                return True
            except queue.Full:
                pass
        return False

    def _run(self, generator_fn):
        gen = None
        try:
            gen = generator_fn()
            for item in gen:
                if not self._put(item):
                    return
            self._put(self._END)
        except BaseException as e:   # re-raised in the consumer's thread
            self._put(_Failure(e))
        finally:
            if gen is not None:
                gen.close()

    def get(self):
        item = self._queue.get()
        if item is self._END:
            self._queue.put(item)       # stay exhausted
            raise StopIteration
        if isinstance(item, _Failure):
            self._queue.put(item)
            raise item.error
        return item

    def close(self):
        self._stop.set()
        while self._thread.is_alive():
            try:
                self._queue.get_nowait()
            except queue.Empty:
                self._thread.join(0.05)
