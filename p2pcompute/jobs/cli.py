"""`p2p job submit|status|logs|stop|list`: the command line of `JobSubmissionClient`."""

from __future__ import annotations

import json
import sys


def _client(args):
    from p2pcompute.jobs.client import JobSubmissionClient
    return JobSubmissionClient(args.address, token=_token(args), home=args.home)


def _token(args) -> str | None:
    if args.token_file:
        with open(args.token_file) as f:
            return f.read().strip()
    return None


def _progress():
    if not sys.stderr.isatty():
        return None

    def show(done: int, total: int) -> None:
        sys.stderr.write(f"\rpackaging the working dir: {done}/{total} file(s)")
        if done == total:
            sys.stderr.write("\n")
        sys.stderr.flush()
    return show


def cmd_submit(args) -> int:
    entry = list(args.entrypoint)
    if entry and entry[0] == "--":
        entry = entry[1:]
    if not entry:
        raise ValueError("nothing to run: p2p job submit [options] -- python script.py")
    env = {}
    if args.working_dir:
        env["working_dir"] = args.working_dir
    if args.exclude:
        env["excludes"] = list(args.exclude)
    if args.env:
        env["env_vars"] = {}
        for item in args.env:
            key, sep, value = item.partition("=")
            if not sep or not key:
                raise ValueError(f"--env {item!r}: use KEY=VALUE")
            env["env_vars"][key] = value
    if args.runtime_env_json:
        env.update(json.loads(args.runtime_env_json))
    client = _client(args)
    job_id = client.submit_job(entrypoint=entry, runtime_env=env or None, submission_id=args.submission_id,
                               progress=_progress())
    print(f"job {job_id} submitted to {client.address}", file=sys.stderr)
    if args.no_wait:
        print(job_id)
        return 0
    for chunk in client.tail_job_logs(job_id):
        sys.stdout.write(chunk)
        sys.stdout.flush()
    status = client.wait(job_id, timeout_s=60)
    info = client.get_job_info(job_id)
    print(f"job {job_id} {status}" + (f": {info.get('message')}" if info.get("message") else ""), file=sys.stderr)
    return 0 if status == "SUCCEEDED" else 1


def cmd_status(args) -> int:
    info = _client(args).get_job_info(args.job_id)
    print(json.dumps(info, indent=2, default=str) if args.json else f"{args.job_id}: {info['state']}"
          + (f" ({info['message']})" if info.get("message") else ""))
    return 0


def cmd_logs(args) -> int:
    client = _client(args)
    if args.follow:
        for chunk in client.tail_job_logs(args.job_id):
            sys.stdout.write(chunk)
            sys.stdout.flush()
    else:
        sys.stdout.write(client.get_job_logs(args.job_id))
    return 0


def cmd_stop(args) -> int:
    stopped = _client(args).stop_job(args.job_id)
    print(f"job {args.job_id}: " + ("stopping" if stopped else "was not running"))
    return 0


def cmd_list(args) -> int:
    jobs = _client(args).list_jobs()
    if args.json:
        print(json.dumps(jobs, indent=2, default=str))
        return 0
    from p2pcompute.dashboard.commands import print_table
    print_table(jobs, ["job_id", "state", "peer", "entry", "message"])
    return 0


def add_parsers(sub) -> None:
    job = sub.add_parser("job", help="submit and manage jobs (scripts run as drivers on the cluster)")
    jsub = job.add_subparsers(dest="job_command", metavar="ACTION")

    def common(p):
        p.add_argument("--address", default=None, help="the dashboard URL (default: the local peer's)")
        p.add_argument("--home", default=None)
        p.add_argument("--token-file", default=None, help="file with the cluster token (default: the home's)")
        p.add_argument("--json", action="store_true")

    submit = jsub.add_parser("submit", help="run `-- COMMAND...` as a driver on the cluster")
    submit.add_argument("--working-dir", default=None, help="directory shipped to the cluster (cwd of the job)")
    submit.add_argument("--exclude", action="append", help="glob of files to leave out of the working dir")
    submit.add_argument("--env", action="append", metavar="KEY=VALUE", help="environment variable of the job")
    submit.add_argument("--runtime-env-json", default=None, help="a runtime_env as JSON")
    submit.add_argument("--submission-id", default=None)
    submit.add_argument("--no-wait", action="store_true", help="print the job id and return at once")
    submit.add_argument("entrypoint", nargs="...")
    common(submit)
    submit.set_defaults(func=_wrap(cmd_submit))
    for name, fn, text in (("status", cmd_status, "a job's state"), ("logs", cmd_logs, "a job's output"),
                           ("stop", cmd_stop, "stop a running job")):
        p = jsub.add_parser(name, help=text)
        p.add_argument("job_id")
        if name == "logs":
            p.add_argument("--follow", "-f", action="store_true")
        common(p)
        p.set_defaults(func=_wrap(fn))
    lst = jsub.add_parser("list", help="every job of the cluster")
    common(lst)
    lst.set_defaults(func=_wrap(cmd_list))
    job.set_defaults(func=lambda args: (job.print_help(), 2)[1])


def _wrap(fn):
    def run(args):
        from p2pcompute.cli import CommandError
        try:
            return fn(args)
        except (ValueError, TypeError, OSError) as exc:
            raise CommandError(str(exc)) from None
    return run
