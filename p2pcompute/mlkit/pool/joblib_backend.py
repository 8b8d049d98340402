"""A joblib backend named "p2pcompute": joblib's batches run on a `Pool` whose processes are cluster actors.

    import joblib
    import p2pcompute.mlkit.pool          # registers the backend when joblib is installed
    with joblib.parallel_backend("p2pcompute"):
        GridSearchCV(model, grid, n_jobs=-1).fit(X, y)

`n_jobs=-1` means every CPU of the cluster (not of this machine). joblib's own batching (auto-sized batches
of calls) and its callback protocol are reused from its multiprocessing backend's mixins; only the pool is
ours. joblib is an optional dependency (`pip install "p2pcompute[pool]"`).
"""

from __future__ import annotations


def _backend_class():
    from joblib._parallel_backends import AutoBatchingMixin, ParallelBackendBase, PoolManagerMixin

    import p2pcompute as p2p
    from p2pcompute.mlkit.pool.mp_pool import Pool

    class P2PBackend(PoolManagerMixin, AutoBatchingMixin, ParallelBackendBase):
        """Runs joblib's batches as chunks on a p2pcompute `Pool`."""

        supports_retrieve_callback = True
        supports_return_generator = False
        supports_timeout = True

        def effective_n_jobs(self, n_jobs):
            if n_jobs == 0:
                raise ValueError("n_jobs == 0 in Parallel has no meaning")
            if n_jobs is None:
                return 1
            if not p2p.is_initialized():
                p2p.init()
            cpus = max(1, int(p2p.cluster_resources().get("CPU", 1)))
            if n_jobs < 0:
                return max(cpus + 1 + n_jobs, 1)
            return n_jobs

        def configure(self, n_jobs=1, parallel=None, prefer=None, require=None, **pool_kwargs):
            n_jobs = self.effective_n_jobs(n_jobs)
            # joblib passes its memmapping options (max_nbytes, mmap_mode, ...): objects already travel
            # through the shared-memory store, so they have no meaning here.
            self._pool = Pool(processes=n_jobs, ray_remote_args=pool_kwargs.get("ray_remote_args"))
            self.parallel = parallel
            return n_jobs

        def terminate(self):
            super().terminate()
            self.reset_batch_stats()

    return P2PBackend


def register_joblib(quiet: bool = False) -> None:
    """Register the "p2pcompute" joblib backend. Without joblib: an ImportError naming the extra to install
    (or nothing, with `quiet`)."""
    try:
        import joblib
    except ImportError:
        if quiet:
            return
        raise ImportError('the joblib backend needs joblib: pip install "p2pcompute[pool]"') from None
    joblib.register_parallel_backend("p2pcompute", _backend_class())
