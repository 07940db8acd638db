"""The `adaptd` command line (DESIGN.md §4): the daemon and its clients.

Exit codes: 0 success; 1 the daemon refused something (rejected records, error answers,
not reachable); 2 bad usage or bad configuration.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Any, Callable, Sequence

from . import __version__
from .bench import arguments
from .client import ClientError, NoDaemon
from .config import ENV_VAR, MAX_NICE, ConfigError, Settings, load_config
from .route import ClusterMismatch, Route

log = logging.getLogger("adaptd")


def _setup_logging(level: str) -> None:
    # Under systemd, journald stamps the time itself.
    fmt = "%(levelname)s %(name)s: %(message)s"
    if not os.environ.get("JOURNAL_STREAM"):
        fmt = "%(asctime)s " + fmt
    logging.basicConfig(level=level.upper(), format=fmt, stream=sys.stderr)
    if level != "debug":   # APScheduler logs every run of every job at INFO: noise in the journal
        logging.getLogger("apscheduler").setLevel(logging.WARNING)


def _fail(message: str, code: int = 1) -> int:
    print(f"adaptd: {message}", file=sys.stderr)
    return code


def cmd_serve(settings: Settings, _args: argparse.Namespace) -> int:
    from .libraries import engine_problem

    _setup_logging(settings.daemon.log_level)
    problem = engine_problem(settings.model.engine)   # before the daemon (numpy) and the store
    if problem is not None:
        log.error("%s", problem)
        return 2
    from .daemon import StartupError, serve
    from .server import SocketInUse
    from .store import StoreError

    try:
        return serve(settings)
    except (StoreError, SocketInUse, StartupError) as exc:
        log.error("%s", exc)
        return 2
    except OSError as exc:
        log.error("cannot start: %s", exc)
        return 2


def cmd_check_config(settings: Settings, _args: argparse.Namespace) -> int:
    import grp

    from .store import driver_problem, redact

    group = settings.server.socket_group
    if group:   # checked here, not when any command reads the config: clients need not have it
        try:
            grp.getgrnam(group)
        except KeyError:
            return _fail(f"{settings.source}: server.socket_group: no group {group!r} on this machine", 2)
    from .libraries import engine_problem
    problem = engine_problem(settings.model.engine) or driver_problem(settings.store.url)
    if problem is not None:
        return _fail(f"{settings.source}: {problem}", 2)
    print(f"{settings.source}: OK (store {redact(settings.store.url)}, socket {settings.server.socket})")
    return 0


def _error_text(response: dict[str, Any]) -> str:
    err = response.get("error", {})
    return f"{err.get('code')}: {err.get('message')}"


def cmd_forecast(settings: Settings, args: argparse.Namespace) -> int:
    from .render import forecast_table

    route = Route.of(settings)
    member = route.member_of(args.series)   # the daemon that serves it, given [cluster] sockets
    client, stats = route.open(member, stats=args.horizon is None)
    try:
        horizon = args.horizon
        if horizon is None:   # the daemon's limit, not the client config's (which may not set it)
            horizon = min(24, int((stats or {}).get("max_horizon") or settings.model.max_horizon))
        response = client.request({"op": "forecast", "series": args.series, "horizon": horizon})
    finally:
        client.close()
    if not response.get("ok"):
        return _fail(route.label(member) + _error_text(response))
    print(json.dumps(response) if args.json else forecast_table(response, settings.model.coverage))
    return 0


def cmd_forget(settings: Settings, args: argparse.Namespace) -> int:
    """Remove each series whole; exit 1 if any was not removed (the others still are)."""
    route = Route.of(settings)
    failed = 0
    for series in args.series:
        member = route.member_of(series)
        if not args.json and sys.stderr.isatty():   # a long history takes minutes: say what is under way
            print(f"{series}: removing ...", file=sys.stderr, flush=True)
        try:
            client = route.connect(member, timeout=None)   # a long history takes a while to delete
            try:
                response = client.request({"op": "forget", "series": series})
            finally:
                client.close()
        except ClusterMismatch:
            raise
        except ClientError as exc:   # that member is down: the series of the others still go
            failed += 1
            _fail(f"{series}: {route.label(member)}{exc}")
            continue
        if args.json:
            print(json.dumps(response))
        elif response.get("ok"):
            print(f"{series}: removed ({response['deleted']} observations deleted)")
        if not response.get("ok"):
            failed += 1
            if not args.json:
                _fail(route.label(member) + _error_text(response))
    return 1 if failed else 0


def _ask_members(settings: Settings, request: dict[str, Any], only: int | None = None
                 ) -> tuple[Route, dict[int, dict[str, Any]], dict[int, str]]:
    """The daemons asked (every member given [cluster] sockets, or member `only`), their answers
    and, by member, why one could not answer. With one daemon, its failure is raised; with a
    cluster, one member down does not hide the others' answers (a list in the wrong order is
    still refused: ClusterMismatch)."""
    route = Route.of(settings)
    members = range(route.members) if only is None else [only]
    if only is not None and not 0 <= only < route.members:
        raise ClusterMismatch(f"--member {only}: [cluster] sockets lists members 0 to {route.members - 1}")
    answers: dict[int, dict[str, Any]] = {}
    failed: dict[int, str] = {}
    for member in members:
        try:
            response = route.ask(member, request)
            if not response.get("ok"):
                raise ClientError(_error_text(response))
        except ClusterMismatch:
            raise
        except ClientError as exc:
            if not route.cluster:
                raise type(exc)(route.label(member) + str(exc)) from None
            failed[member] = route.label(member) + str(exc)
            continue
        answers[member] = response
    return route, answers, failed


def cmd_series(settings: Settings, args: argparse.Namespace) -> int:
    from .render import series_table

    _route, answers, failed = _ask_members(settings, {"op": "series"}, args.member)
    # Each member lists only its own series: together, every series once.
    listing = sorted((item for answer in answers.values() for item in answer["series"]), key=lambda item: item["series"])
    print(json.dumps(listing) if args.json else series_table(listing))
    for why in failed.values():
        _fail(f"{why} (its series are not listed)")
    return 1 if failed else 0


def cmd_status(settings: Settings, args: argparse.Namespace) -> int:
    route, answers, failed = _ask_members(settings, {"op": "stats"}, args.member)
    text, code = status_output(route, answers, failed, args.json)
    print(text)
    return code


def status_output(route: Route, answers: dict[int, dict[str, Any]], failed: dict[int, str],
                  as_json: bool) -> tuple[str, int]:
    """What `adaptd status` prints of the daemons' answers to stats, and its exit code: 1 unless
    every daemon asked answered and is healthy."""
    from .render import status_text

    code = 0 if not failed and all(answer.get("health") == "ok" for answer in answers.values()) else 1
    if not route.cluster:
        return (json.dumps(answers[0]) if as_json else status_text(answers[0])), code
    asked = sorted([*answers, *failed])
    if as_json:
        return json.dumps([answers.get(k) or {"ok": False, "member": k, "error": failed[k]} for k in asked]), code
    text = "\n\n".join(f"member {k} ({route.sockets[k]})\n" + (status_text(answers[k]) if k in answers else
                                                                f"health:            unreachable: {failed[k]}")
                       for k in asked)
    return text, code


def cmd_ingest(settings: Settings, args: argparse.Namespace) -> int:
    from .datafile import FormatError
    from .upload import Stopped, upload

    if args.batch < 1:
        return _fail(f"--batch {args.batch}: expected at least 1 record per request", 2)
    try:
        report = upload(settings, args.path, batch=args.batch, progress=not args.no_progress)
    except FormatError as exc:
        return _fail(f"{args.path}: {exc}", 2)
    except Stopped as exc:
        print(exc.report.summary())   # what was acknowledged and rejected before it stopped
        return _fail(f"{args.path}: {exc}", exc.exit_code)
    except FileNotFoundError:
        return _fail(f"{args.path}: no such file", 2)
    except IsADirectoryError:
        return _fail(f"{args.path}: a directory, not a file", 2)
    print(report.summary())
    return 0 if report.ok else 1


def cmd_replay(settings: Settings, args: argparse.Namespace) -> int:
    from .datafile import FormatError
    from .replay import UsageError, main as replay

    _setup_logging("warning")
    try:
        return replay(settings, args.data, args.horizon, args.warmup_frac, args.seed, args.forecasts_out,
                      args.report_out, progress=not args.no_progress)
    except UsageError as exc:
        return _fail(str(exc), 2)
    except FormatError as exc:
        return _fail(f"{args.data}: {exc}", 2)


def cmd_meta_train(settings: Settings, args: argparse.Namespace) -> int:
    if not 0 <= args.nice <= MAX_NICE:
        return _fail(f"--nice {args.nice}: expected an integer from 0 to {MAX_NICE}", 2)
    os.nice(args.nice)   # before torch starts its threads: they inherit it
    from .meta.cli import meta_train

    _setup_logging("warning")
    return meta_train(settings, args)


def cmd_initializers(settings: Settings, args: argparse.Namespace) -> int:
    from .meta.cli import list_initializers

    return list_initializers(settings, args)


def cmd_bench(settings: Settings, args: argparse.Namespace) -> int:
    from .bench import run_bench

    return run_bench(args.bench, settings, args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="adaptd", description="Online forecasting daemon for drifting series.")
    parser.add_argument("--version", action="version", version=f"adaptd {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", metavar="FILE", help="config file (default: $ADAPTD_CONFIG, else built-in defaults)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, func: Callable[[Settings, argparse.Namespace], int], help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, parents=[common], help=help, description=help)
        p.set_defaults(func=func)
        return p

    add("serve", cmd_serve, "run the daemon in the foreground")
    p = add("ingest", cmd_ingest, "send records from a CSV (long or wide) or JSON-lines file, or - for stdin")
    p.epilog = ("Several daemons on one database: with [cluster] sockets in the config (every member's socket, "
                "in member order), each record goes to the member that owns its series, each member's records "
                "in file order; every socket's daemon is first checked to be the member its place says (else "
                "nothing is sent, exit 2). The report counts per member.")
    p.add_argument("path", help="file to read, or - for standard input")
    p.add_argument("--batch", type=int, default=1000, help="records per request (default 1000)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p = add("forecast", cmd_forecast, "print the forecast of one series")
    p.epilog = "With [cluster] sockets in the config, the member that owns the series answers."
    p.add_argument("series")
    p.add_argument("-H", "--horizon", type=int, default=None,
                   help="steps ahead (default 24, or the daemon's [model] max_horizon if that is less)")
    p.add_argument("--json", action="store_true", help="print the daemon's JSON answer")
    p = add("forget", cmd_forget, "remove series whole: their observations, drift events, checkpoints and models")
    p.epilog = ("A record sent for a series while it is being removed is kept and stops its removal. With "
                "[cluster] sockets in the config, the member that owns each series removes it.")
    p.add_argument("series", nargs="+")
    p.add_argument("--json", action="store_true", help="print the daemon's JSON answer, one line per series")
    p = add("series", cmd_series, "list series with counts and last timestamps")
    p.epilog = ("With [cluster] sockets in the config, every member's series, in one list (exit 1, "
                "naming it, if a member cannot answer).")
    p.add_argument("--json", action="store_true")
    p.add_argument("--member", type=int, help="with [cluster] sockets: ask only this member")
    p = add("status", cmd_status, "show the daemon's health and counters")
    p.epilog = ("With [cluster] sockets in the config, every member's, in member order (--json: a list); "
                "exit 1 unless all answer and are healthy. --member K asks only member K (a host's own check).")
    p.add_argument("--json", action="store_true")
    p.add_argument("--member", type=int, help="with [cluster] sockets: ask only this member")
    p = add("replay", cmd_replay, "backtest the engine on a CSV, leak-free (a forecast sees only rows up to its origin)")
    p.add_argument("data", metavar="DATA.csv", help="wide (time column + one column per series) or long CSV")
    p.add_argument("--horizon", type=int, required=True, help="steps ahead forecast after every observation")
    p.add_argument("--warmup-frac", type=float, default=0.25,
                   help="first fraction of each series used for fitting only, never scored (default 0.25)")
    p.add_argument("--seed", type=arguments.seed, default=0)
    p.add_argument("--forecasts-out", metavar="OUT.csv", help="write series,origin,target,step,forecast,lo,hi")
    p.add_argument("--report-out", metavar="OUT.json", help="write the per-series and overall report")
    p.add_argument("--no-progress", action="store_true")
    p = add("meta-train", cmd_meta_train,
            "meta-learn the initializer drifting series restart from, on the store's history or an M4 file")
    p.add_argument("--m4", metavar="FILE.csv", help="train on an M4-layout file (one row per series) instead")
    p.add_argument("--iterations", type=int, help="override [meta] iterations")
    p.add_argument("--algorithm", choices=("meta_sgd", "reptile"), help="override [meta] algorithm")
    p.add_argument("--seed", type=arguments.at_least(0), default=0)
    p.add_argument("--no-promote", action="store_true", help="store the result but never promote it")
    p.add_argument("--from-pretrained", action="store_true",
                   help="start from a pretrained initializer (the store's, else one fitted on this data), not "
                        "the current meta one: on an empty store the result depends on the data and --seed "
                        "alone (how `make initializer` builds the packaged one)")
    p.add_argument("--export", metavar="FILE", help="also write the new initializer to FILE (the packaged one)")
    p.add_argument("--nice", type=int, default=0, metavar="N",
                   help="run at a CPU priority N steps lower (0-19, as nice(1); the daemon's own runs use [meta] nice)")
    p.add_argument("--json", action="store_true", help="print the run's report as JSON")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--progress-lines", action="store_true",
                   help='also print progress to stdout, one JSON line per iteration: {"progress": {"iteration", '
                        '"iterations", "loss", "tasks_per_second", "eta_s"}} (what the daemon shows in `adaptd status`)')
    p = add("initializers", cmd_initializers, "list stored initializers with their validation scores")
    p.add_argument("--json", action="store_true")
    add("check-config", cmd_check_config, "validate a config file and exit")
    p = add("bench", cmd_bench, "run a benchmark and print its report")
    bench = p.add_subparsers(dest="bench", required=True, metavar="BENCH")
    # --config after the benchmark's name too; SUPPRESS keeps one given before it (argparse lets
    # a subparser's default overwrite what its parent parsed).
    after = argparse.ArgumentParser(add_help=False)
    after.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS,
                       help="config file (default: $ADAPTD_CONFIG, else built-in defaults)")

    def benchmark(name: str, help: str) -> argparse.ArgumentParser:
        return bench.add_parser(name, parents=[after], help=help)

    b = benchmark("ingest", "records/s through the socket vs raw sqlite3 executemany")
    b.add_argument("--clients", type=arguments.at_least(1), default=8)
    b.add_argument("--batch", type=arguments.at_least(1), default=1000)
    b.add_argument("--records", type=arguments.at_least(1), default=400_000, help="records in all, over all clients")
    b.add_argument("--synchronous", choices=("normal", "full"), default="full")
    lat = benchmark("latency", "forecast answer times over the socket while ingest runs")
    lat.add_argument("--series", type=int, default=2000)
    lat.add_argument("--clients", type=int, default=4)
    lat.add_argument("--seconds", type=float, default=30.0)
    lat.add_argument("--interval", type=float, default=1.0, help="seconds between observations of a series")
    lat.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", dest="overrides",
                     help="a daemon setting for this run (repeatable), e.g. --set model.train_every=1")
    lat.add_argument("--rate", type=float, default=0.0,
                     help="forecasts a second over all clients, at random times (default 0: back to back)")
    lat.add_argument("--floor", action="store_true",
                     help="first measure the same clients against a stand-in process that only answers ready "
                          "bytes (alone, with the feed, with the feed and a busy core): what the machine leaves")
    a = benchmark("adapt", "time of one drift adaptation (k steps) of one series")
    a.add_argument("--repeats", type=arguments.at_least(2), default=50)
    arguments.accuracy(benchmark("accuracy", "H=1/24/48 MSE of adaptd vs baselines and published results"))
    arguments.meta(benchmark("meta", "post-change error of random/pretrained/meta initializers vs RLS"))
    arguments.coldstart(benchmark("coldstart", "young series: naive fallback vs θ* vs the cold-start engine"))
    arguments.soak(benchmark("soak", "many clients for minutes: drift storms, overload, memory, errors"))
    b.add_argument("--engines", default="online,naive",
                   help="comma-separated [model] engine values to measure (default online,naive)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = load_config(args.config)
    except ConfigError as exc:
        return _fail(str(exc), 2)
    try:
        return int(args.func(settings, args))
    except ClusterMismatch as exc:   # [cluster] sockets do not match the daemons: bad configuration
        return _fail(str(exc), 2)
    except ClientError as exc:
        if isinstance(exc, NoDaemon) and settings.source == "<defaults>":   # e.g. its config is in /etc/adaptd
            return _fail(f"{exc} [no config given, so the default socket: pass the daemon's with "
                         f"--config or {ENV_VAR}]")
        return _fail(str(exc))
    except KeyboardInterrupt:
        return _fail("interrupted", 130)
    except BrokenPipeError:
        return 1
