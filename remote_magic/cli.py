"""`remote-magic`: the same task management as the magics, from a shell."""

from __future__ import annotations

import argparse
import sys

from .client.core import Client, parse_age
from .client.hostcheck import check_host, hosts_table
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
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("hosts", help="list the configured hosts")
    test = commands.add_parser("test", help="check a host step by step")
    test.add_argument("host")
    setup = commands.add_parser("setup", help="make a host ready to run tasks")
    setup.add_argument("host")
    status = commands.add_parser("status", help="table of tasks")
    status.add_argument("ids", nargs="*")
    status.add_argument("-q", "--queue", metavar="HOST")
    status.add_argument("--all", action="store_true", help="include finished tasks")
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

    client = Client()
    try:
        return _run(client, args)
    except RemoteMagicError as exc:
        print(f"remote-magic: {exc}", file=sys.stderr)
        return 1
    finally:
        client.close()


def _run(client: Client, args: argparse.Namespace) -> int:
    if args.command == "hosts":
        print(hosts_table(client.config()))
        return 0
    if args.command in ("test", "setup"):
        client.host(args.host)  # an unknown host is an error, not a failed check
        if args.command == "setup":
            print(client.setup(args.host))
        checks = check_host(client, args.host)
        for check in checks:
            print(check)
        return 0 if all(c.ok is not False for c in checks) else 1
    if args.command == "status":
        records, sweeps = client.status_view([id_prefix(i) for i in args.ids], args.queue,
                                             args.all)
        print(status_table(records, sweeps)["text/plain"])
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
