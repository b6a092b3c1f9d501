"""`remote-magic`: the same task management as the magics, from a shell.

Exit status: 0 when everything asked for was done (or a check passed), 1 when something was
not (a task not cancelled or not purged, a failing check, an error), 2 for a command line
argparse refuses. `--json` prints data for scripts instead of tables.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from dataclasses import asdict
from typing import Any

from . import __version__
from .client.core import Client, parse_age
from .client.hostcheck import check_host, hosts_list, hosts_table
from .errors import RemoteMagicError
from .notebook.arguments import RESOURCES, id_prefix, resources
from .notebook.views import (
    allocation_line,
    allocations_table,
    outcome_lines,
    status_table,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="remote-magic", description="Manage remote_magic hosts and tasks.")
    parser.add_argument("--version", action="version", version=f"remote-magic {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help="log each step to stderr (SSH, agent requests, scheduler "
                             "commands; the agents log to agent.log in the host's workdir)")
    commands = parser.add_subparsers(dest="command", required=True)
    hosts = commands.add_parser("hosts", help="list the configured hosts")
    hosts.add_argument("--json", action="store_true", help="as JSON, every setting")
    test = commands.add_parser("test", help="check a host step by step")
    test.add_argument("host")
    test.add_argument("--json", action="store_true", help="the steps as JSON")
    setup = commands.add_parser("setup", help="make a host ready to run tasks")
    setup.add_argument("host")
    status = commands.add_parser("status", help="table of tasks")
    status.add_argument("ids", nargs="*")
    status.add_argument("-q", "--queue", metavar="HOST")
    status.add_argument("--all", action="store_true",
                        help="every task (by default: the unfinished ones and the last 20 that "
                             "finished in the last 24 hours)")
    status.add_argument("--json", action="store_true", help="a record per task, as JSON")
    commands.add_parser("schema", help="the JSON Schema of the hosts file, for editors")
    log = commands.add_parser("log", help="what a task printed (a sweep's element: SWEEP "
                                          "INDEX)")
    log.add_argument("id")
    log.add_argument("index", nargs="?", type=int)
    log.add_argument("--stderr", action="store_true", help="its stderr instead of stdout")
    kill = commands.add_parser("kill", help="cancel tasks")
    kill.add_argument("ids", nargs="+")
    purge = commands.add_parser("purge", help="remove finished tasks, on the host and here")
    purge.add_argument("ids", nargs="*")
    purge.add_argument("--older", metavar="AGE", help="finished tasks older than AGE (7d, 12h)")
    purge.add_argument("-q", "--queue", metavar="HOST")
    alloc = commands.add_parser("alloc", help="hold a batch allocation with a warm worker; "
                                              "with no name, list them")
    alloc.add_argument("name", nargs="?", help="its name, then usable as a host")
    alloc.add_argument("-q", "--queue", metavar="HOST", help="the batch host to hold it on")
    for option in RESOURCES:
        alloc.add_argument(f"--{option}", type=int if option in ("cores", "nodes", "gpus")
                           else str)
    alloc.add_argument("--slots", type=int, help="tasks at once (default: --cores, else 1)")
    alloc.add_argument("--stop", metavar="NAME", help="end this allocation")
    args = parser.parse_args(argv)
    if args.debug:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s"))
        logger = logging.getLogger("remote_magic")
        logger.addHandler(handler)
        logger.setLevel(logging.DEBUG)
        os.environ["REMOTE_MAGIC_DEBUG"] = "1"  # agents started here log too

    client = Client()
    try:
        return _run(client, args)
    except RemoteMagicError as exc:
        print(f"remote-magic: {exc}", file=sys.stderr)
        return 1
    finally:
        client.close()


def _run(client: Client, args: argparse.Namespace) -> int:
    if args.command == "schema":
        from .config.schema import hosts_schema

        print(_json(hosts_schema()))
        return 0
    if args.command == "hosts":
        config = client.config()
        print(_json(hosts_list(config)) if args.json else hosts_table(config))
        return 0
    if args.command in ("test", "setup"):
        client.host(args.host)  # an unknown host is an error, not a failed check
        if args.command == "setup":
            print(client.setup(args.host))
        checks = check_host(client, args.host)
        if getattr(args, "json", False):
            print(_json([asdict(check) for check in checks]))
        else:
            for check in checks:
                print(check)
        return 0 if all(c.ok is not False for c in checks) else 1
    if args.command == "status":
        records, sweeps = client.status_view([id_prefix(i) for i in args.ids], args.queue,
                                             args.all)
        if args.json:
            print(_json([{k: v for k, v in asdict(r).items() if k != "progress"}
                         for r in records]))
        else:
            print(status_table(records, sweeps)["text/plain"])
        return 0
    if args.command == "log":
        record = client.task_or_element(id_prefix(args.id), args.index, "log")
        print(client.log(record, "stderr" if args.stderr else "stdout"), end="")
        return 0
    if args.command == "alloc":
        if args.stop:
            print(allocation_line(client.stop_allocation(args.stop)))
        elif args.name is None:
            print(allocations_table(client.allocations(args.queue))["text/plain"])
        elif args.queue is None:
            raise RemoteMagicError(f"alloc {args.name}: name the batch host with -q HOST")
        else:
            print(allocation_line(client.allocate(args.name, args.queue, resources(args),
                                                  args.slots)))
        return 0
    if args.command == "kill":
        records = client.records_for([id_prefix(i) for i in args.ids])
        outcome = client.kill(records)
    else:
        if args.ids:
            records = client.records_for([id_prefix(i) for i in args.ids])
        elif args.older:
            records = client.older_than(parse_age(args.older), host=args.queue)
        else:
            raise RemoteMagicError("Name the tasks to purge, or use --older AGE [-q HOST].")
        outcome = client.purge(records)
    for line in outcome_lines(outcome, records):
        print(line)
    return 1 if any(_not_done(said) for said in outcome.values()) else 0


def _not_done(said: str) -> bool:
    """Whether a kill or purge outcome says the task was left as it was ("not cancelled:
    ...", "not purged: ...", "still running: kill it first")."""
    return said.startswith(("not ", "still "))


def _json(data: Any) -> str:
    return json.dumps(data, indent=2, default=str)


if __name__ == "__main__":
    sys.exit(main())
