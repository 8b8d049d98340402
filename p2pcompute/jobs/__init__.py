"""Job submission: run a script as a driver on a peer of the cluster, from anywhere that reaches its
dashboard with the cluster token. `JobSubmissionClient` is the Python API (as Ray's), `p2p job ...` the
command line; `manager.JobManager` is the server side, inside each peer's dashboard."""

from p2pcompute.jobs.client import JobStatus, JobSubmissionClient

__all__ = ["JobStatus", "JobSubmissionClient"]
