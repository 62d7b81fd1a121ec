"""MSRP relay benchmark: imstack's relay and Kamailio's ``msrp`` module, same load, same run.

    python bench/msrp_relay.py                 # both relays (Kamailio if installed)
    python bench/msrp_relay.py --only imstack  # just ours
    python bench/msrp_relay.py --quick         # shorter runs, 2,000 idle connections
    python bench/msrp_relay.py --throughput-only --rounds 3   # SEND rate A/B, alternating

On a busy machine compare ``relay_cpu_us_per_send`` (relay CPU time per acked SEND) and the
imstack/Kamailio ratio of one run rather than absolute rates: ``--throughput-only`` runs just
the 10-pair SEND throughput, alternating imstack and Kamailio ``--rounds`` times.

The relay under test is pinned to CPU 0 and the load generator (bench/msrp_load.py, one
process) to CPU 1. Kamailio runs ../shared/reference/kamailio-msrp-relay.cfg (hop-by-hop
responses, digest AUTH; TLS for the TLS idle run) with 4 TCP workers. Relay CPU and memory
come from /proc via psutil (Kamailio: the sum over its processes, PSS so shared memory is
counted once). Prints one JSON object per measurement and a summary table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
LOAD = [sys.executable, str(ROOT / "bench" / "msrp_load.py")]
IMSTACK = str(Path(sys.executable).parent / "imstack")
# The handbook sits beside the checkout (../shared); a worktree under wt/ looks one level up.
KAMAILIO_CFG = (
    next(
        (
            p
            for p in (ROOT.parent / "shared", ROOT.parent.parent / "shared")
            if (p / "reference" / "kamailio-msrp-relay.cfg").exists()
        ),
        ROOT.parent / "shared",
    )
    / "reference"
    / "kamailio-msrp-relay.cfg"
)
PASSWORD = "bench-secret"
USERS = 20


def pinned(cpu: int) -> list[str]:
    return ["taskset", "-c", str(cpu)] if shutil.which("taskset") and os.cpu_count() else []


class Relay:
    name = ""
    address = ""
    user_format = "user{i}"

    def processes(self) -> list[psutil.Process]:
        raise NotImplementedError

    def cpu_seconds(self) -> float:
        total = 0.0
        for proc in self.processes():
            try:
                times = proc.cpu_times()
                total += times.user + times.system
            except psutil.Error:
                pass
        return total

    def memory_mb(self) -> float:
        total = 0
        for proc in self.processes():
            try:
                info = proc.memory_full_info()
                total += getattr(info, "pss", info.rss)
            except psutil.Error:
                pass
        return total / 2**20


class Imstack(Relay):
    name = "imstack"

    def __init__(self, workdir: Path, port: int, tls: tuple[Path, Path] | None) -> None:
        self.workdir = workdir
        self.address = f"127.0.0.1:{port}"
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("IMSTACK_")},
            "IMSTACK_DATA_DIR": str(workdir / "data"),
            "IMSTACK_DOMAIN": "bench.local",
            "IMSTACK_MSRP_HOST": "127.0.0.1",
            "IMSTACK_MSRP_PORT": str(port),
            "IMSTACK_MSRP_PUBLIC_HOST": "127.0.0.1",
            "IMSTACK_MSRP_ALLOW_INSECURE_AUTH": "true",
            "IMSTACK_MSRP_MAX_CONNECTIONS": "19000",
            # Every benchmark connection comes from 127.0.0.1.
            "IMSTACK_MSRP_MAX_CONNECTIONS_PER_SOURCE": "0",
            "IMSTACK_LOG_LEVEL": "WARNING",
        }
        if tls:
            self.env["IMSTACK_TLS_CERT"], self.env["IMSTACK_TLS_KEY"] = map(str, tls)
        self.proc: subprocess.Popen[bytes] | None = None
        self.profile: Path | None = None  # cProfile output of the relay process, if set

    def prepare(self) -> None:
        for i in range(USERS):
            subprocess.run(
                [IMSTACK, "user", "add", f"user{i}@bench.local", "--password-stdin"],
                input=f"{PASSWORD}\n".encode(),
                env=self.env,
                check=True,
                capture_output=True,
            )

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [*pinned(0), *self.profiler(), IMSTACK, "serve", "relay"],
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=open(self.workdir / "relay.log", "wb"),  # noqa: SIM115
        )
        wait_port(self.address)

    def profiler(self) -> list[str]:
        if self.profile is None:
            return []
        return [sys.executable, "-m", "cProfile", "-o", str(self.profile)]

    def processes(self) -> list[psutil.Process]:
        assert self.proc is not None
        root = psutil.Process(self.proc.pid)
        # taskset execs into imstack; the embedded PostgreSQL is not part of the relay.
        return [root]

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(30)
            self.proc = None


class Kamailio(Relay):
    name = "kamailio"
    user_format = "user{i}"

    def __init__(self, workdir: Path, tls: tuple[Path, Path] | None, workers: int = 4) -> None:
        self.workdir = workdir
        self.address = "127.0.0.1:2855"
        self.tls = tls
        self.workers = workers
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        base = self.workdir / "kamailio"
        (base / "run").mkdir(parents=True, exist_ok=True)
        (base / "tls").mkdir(parents=True, exist_ok=True)
        if self.tls:
            shutil.copy(self.tls[0], base / "tls" / "cert.pem")
            shutil.copy(self.tls[1], base / "tls" / "key.pem")
        cfg = self.workdir / "kamailio.cfg"
        cfg.write_text(KAMAILIO_CFG.read_text().replace("@DIR@", str(self.workdir)))
        args = [
            "kamailio",
            "-f",
            str(cfg),
            "-DD",
            "-E",
            "-m",
            "2048",  # shared memory, MB: TLS connections take ~40 KB each
            "-A",
            "WITH_HOPBYHOP",
            "-A",
            "WITH_DIGEST",
            "-A",
            f"TCP_CHILDREN={self.workers}",
        ]
        if self.tls:
            args += ["-A", "WITH_TLS"]
        self.proc = subprocess.Popen(
            [*pinned(0), *args],
            stdout=subprocess.DEVNULL,
            stderr=open(self.workdir / "kamailio.log", "wb"),  # noqa: SIM115
        )
        wait_port(self.address)

    def processes(self) -> list[psutil.Process]:
        assert self.proc is not None
        root = psutil.Process(self.proc.pid)
        return [root, *root.children(recursive=True)]

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
            self.proc = None
            time.sleep(1)


def wait_port(address: str, timeout: float = 30) -> None:
    host, port = address.rsplit(":", 1)

    async def probe() -> bool:
        try:
            _, writer = await asyncio.open_connection(host, int(port))
        except OSError:
            return False
        writer.close()
        return True

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if asyncio.run(probe()):
            return
        time.sleep(0.2)
    raise RuntimeError(f"nothing listens on {address}")


def load(relay: Relay, scenario: str, *args: str, tls: bool = False) -> dict[str, float]:
    cmd = [
        *pinned(1),
        *LOAD,
        scenario,
        "--relay",
        relay.address,
        "--user",
        relay.user_format,
        "--users",
        str(USERS),
        "--password",
        PASSWORD,
        *args,
    ]
    if tls:
        cmd.append("--tls")
    cpu0 = relay.cpu_seconds()
    began = time.monotonic()
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    elapsed = time.monotonic() - began
    if out.returncode != 0:
        raise RuntimeError(f"{scenario} against {relay.name} failed:\n{out.stderr[-2000:]}")
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    result["relay_cpu_s"] = relay.cpu_seconds() - cpu0
    result["wall_s"] = elapsed
    if result.get("sends_acked"):
        result["relay_cpu_us_per_send"] = 1e6 * result["relay_cpu_s"] / result["sends_acked"]
    return result


def idle(relay: Relay, groups: list[tuple[int, bool]]) -> dict[str, float]:
    """Open and AUTH ``count`` connections per (count, tls) group, all held at once, then read
    the relay's memory."""
    before = relay.memory_mb()
    procs = []
    result: dict[str, float] = {"relay_mb_before": before, "connections": 0, "tls": 0}
    for count, tls in groups:
        cmd = [
            *pinned(1),
            *LOAD,
            "idle",
            "--relay",
            relay.address,
            "--user",
            relay.user_format,
            "--users",
            str(USERS),
            "--password",
            PASSWORD,
            "--count",
            str(count),
            "--hold",
            "60",
        ]
        if tls:
            cmd.append("--tls")
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        procs.append(proc)
        assert proc.stdout is not None and proc.stderr is not None
        line = proc.stdout.readline()
        if not line:
            for other in procs:
                other.kill()
            raise RuntimeError(f"idle against {relay.name} failed: {proc.stderr.read()[-2000:]}")
        opened = json.loads(line)
        result["connections"] += opened["connections"]
        result["tls"] += opened["connections"] if tls else 0
        result[f"auth_seconds_{'tls' if tls else 'tcp'}"] = opened["seconds"]
    time.sleep(2)
    result["relay_mb"] = relay.memory_mb()
    result["kb_per_connection"] = 1024 * (result["relay_mb"] - before) / result["connections"]
    for proc in procs:
        proc.terminate()
        proc.wait(30)
    return result


@contextmanager
def running(relay: Relay) -> Iterator[Relay]:
    relay.start()  # type: ignore[attr-defined]
    try:
        yield relay
    finally:
        relay.stop()  # type: ignore[attr-defined]


def measure(relay: Relay, quick: bool, tls_pair: tuple[Path, Path]) -> dict[str, object]:
    seconds = "4" if quick else "10"
    out: dict[str, object] = {}
    with running(relay):
        out["throughput"] = load(
            relay, "throughput", "--pairs", "10", "--window", "64", "--seconds", seconds
        )
        out["latency_2500"] = load(
            relay, "latency", "--pairs", "10", "--rate", "2500", "--seconds", seconds
        )
        out["transfer_1mb"] = load(
            relay, "transfer", "--size", str(1 << 20), "--chunk", "2048", "--in-flight", "16"
        )
        if relay.name == "imstack":
            rss0 = relay.memory_mb()
            out["transfer_50mb"] = load(
                relay,
                "transfer",
                "--size",
                str(50 << 20),
                "--chunk",
                str(50 << 20),
                "--in-flight",
                "1",
            )
            out["transfer_50mb"]["relay_mb_before"] = rss0  # type: ignore[index]
            out["transfer_50mb"]["relay_mb_after"] = relay.memory_mb()  # type: ignore[index]
        count = 2000 if quick else 10000
        if relay.name == "imstack":
            # One relay, one port: half the clients over TCP, half over TLS, all at once.
            out["idle_mixed"] = idle(relay, [(count // 2, False), (count // 2, True)])
        else:
            out["idle_tcp"] = idle(relay, [(count // 2, False)])
    if relay.name == "kamailio":
        tls_relay = Kamailio(relay.workdir, tls_pair)  # type: ignore[attr-defined]
        try:
            with running(tls_relay):
                out["idle_tls"] = idle(tls_relay, [(count // 2, True)])
        except RuntimeError as exc:
            out["idle_tls"] = {"error": str(exc)[-300:]}
    print(json.dumps({relay.name: out}, default=str), flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", choices=["imstack", "kamailio"])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--port", type=int, default=2856, help="imstack's MSRP port")
    parser.add_argument(
        "--throughput-only", action="store_true", help="only the 10-pair SEND rate, A/B"
    )
    parser.add_argument("--rounds", type=int, default=1, help="--throughput-only: rounds")
    parser.add_argument("--seconds", type=float, default=10, help="--throughput-only: per run")
    parser.add_argument("--profile", type=Path, help="--throughput-only: cProfile imstack to")
    args = parser.parse_args()
    from services.relay.tls import write_selfsigned

    with tempfile.TemporaryDirectory(prefix="imstack-bench-") as tmp:
        work = Path(tmp)
        os.chmod(work, 0o755)
        cert, key = work / "cert.pem", work / "key.pem"
        write_selfsigned(cert, key, ["127.0.0.1"])
        key.chmod(0o644)  # Kamailio's workers read it after dropping nothing; bench only
        results: dict[str, dict[str, object]] = {}
        if args.throughput_only:
            throughput_rounds(work, args)
            return
        if args.only in (None, "imstack"):
            ours = Imstack(work / "imstack", args.port, (cert, key))
            (work / "imstack").mkdir()
            ours.prepare()
            results["imstack"] = measure(ours, args.quick, (cert, key))
        if args.only in (None, "kamailio"):
            if shutil.which("kamailio") is None:
                print("kamailio is not installed (apt-get install kamailio kamailio-tls-modules)")
            else:
                (work / "kam").mkdir()
                results["kamailio"] = measure(Kamailio(work / "kam", None), args.quick, (cert, key))
    print(json.dumps(results, indent=2, default=str))
    summary(results)


def throughput_rounds(work: Path, args: argparse.Namespace) -> None:
    """SEND throughput with 10 pairs, imstack and Kamailio alternating, ``args.rounds`` times.

    Prints per run the rate and the relay's CPU microseconds per acked SEND, then the medians
    and the imstack/Kamailio rate ratio of each round (the machine's load drifts; a ratio
    taken back to back is steadier than either number alone)."""
    relays: list[Relay] = []
    if args.only in (None, "imstack"):
        (work / "imstack").mkdir()
        ours = Imstack(work / "imstack", args.port, None)
        ours.profile = args.profile
        ours.prepare()
        relays.append(ours)
    if args.only in (None, "kamailio") and shutil.which("kamailio") is not None:
        (work / "kam").mkdir()
        relays.append(Kamailio(work / "kam", None))
    runs: dict[str, list[dict[str, float]]] = {relay.name: [] for relay in relays}
    ratios = []
    for round_no in range(args.rounds):
        rates = {}
        for relay in relays:
            with running(relay):
                result = load(
                    relay, "throughput", "--pairs", "10", "--window", "64",
                    "--seconds", str(args.seconds),
                )  # fmt: skip
            runs[relay.name].append(result)
            rates[relay.name] = result["sends_per_s"]
            print(
                json.dumps(
                    {
                        "round": round_no,
                        "relay": relay.name,
                        "sends_per_s": round(result["sends_per_s"]),
                        "relay_cpu_us_per_send": round(result["relay_cpu_us_per_send"], 1),
                    }
                ),
                flush=True,
            )
        if len(rates) == 2:
            ratios.append(rates["imstack"] / rates["kamailio"])
    for name, results in runs.items():
        rate = statistics.median(r["sends_per_s"] for r in results)
        cpu = statistics.median(r["relay_cpu_us_per_send"] for r in results)
        print(f"{name:9} median {rate:8.0f} SEND/s  {cpu:6.1f} us relay CPU per SEND")
    if ratios:
        print("imstack/kamailio per round: " + " ".join(f"{r:.2f}" for r in ratios))
        print(f"median ratio {statistics.median(ratios):.2f}")


def summary(results: dict[str, dict[str, object]]) -> None:
    def get(relay: str, key: str, field: str) -> float | None:
        value = results.get(relay, {}).get(key)
        return value.get(field) if isinstance(value, dict) else None  # type: ignore[no-any-return]

    rows = [
        ("SENDs/s, 10 pairs", "throughput", "sends_per_s"),
        ("p50 ms @2500/s", "latency_2500", "p50_ms"),
        ("p99 ms @2500/s", "latency_2500", "p99_ms"),
        ("1 MB in 2 KB chunks, s", "transfer_1mb", "seconds"),
        ("50 MB one chunk, s", "transfer_50mb", "seconds"),
        ("RSS MB before 50 MB", "transfer_50mb", "relay_mb_before"),
        ("RSS MB after 50 MB", "transfer_50mb", "relay_mb_after"),
        ("MB, 5k TCP + 5k TLS idle", "idle_mixed", "relay_mb"),
        ("MB, 5k idle TCP", "idle_tcp", "relay_mb"),
        ("MB, 5k idle TLS", "idle_tls", "relay_mb"),
    ]
    print(f"\n{'measure':28} {'imstack':>12} {'kamailio':>12} {'ratio':>8}")
    for label, key, field in rows:
        ours, theirs = get("imstack", key, field), get("kamailio", key, field)
        ratio = f"{ours / theirs:.2f}" if ours and theirs else "-"
        fmt = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
        print(f"{label:28} {fmt(ours):>12} {fmt(theirs):>12} {ratio:>8}")


if __name__ == "__main__":
    main()
