"""The GPU zoo: kilnrt against torch eager and torch.compile on the models it was tuned on
and on models nobody tuned for (``benchmarks/zoo_models.py``).

    python benchmarks/zoo.py                                   # every model, batch 1 and throughput
    python benchmarks/zoo.py --models swin_t,gpt2 --batches 1
    python benchmarks/zoo.py --peers eager,default             # skip max-autotune (slow to compile)
    python benchmarks/zoo.py --out benchmarks/results/X.json --resume   # go on with a stopped run (same commit)

The models are in ``benchmarks/zoo_models.py``.  For each (model, batch) row: the FP32 model's
output is the reference; the model is exported with PyTorch's default ONNX exporter (the
TorchScript one where that fails, recorded in ``exporter``); kilnrt builds it in FP16 with
the default options and is timed through the public call (``benchmarks/measure.py``); then
the peers at FP16, each replayed from a CUDA graph: eager (``channels_last`` for CNNs),
``torch.compile`` default mode, and ``max-autotune-no-cudagraphs`` (BERT's peers run
PyTorch's SDPA attention with the same weights: ``Entry.peer``).

Two passes, so that a set fits the GPU machine's time:

1. prepare: each row gets a process of its own for its peers (``--prepare-jobs`` of them
   preparing at once), which exports the ONNX file, saves the inputs and the reference
   output, and compiles each torch.compile peer (``torch_compile_default_s``,
   ``torch_compile_s``; ``compile_s`` is max-autotune's), then keeps the compiled models
   and waits;
2. time, one row at a time with nothing else running: kilnrt's cold build (a fresh process,
   an empty Triton cache, no timing cache: ``build_s``) and its timings, then the row's
   peer process times eager and the compiled peers it kept.

Writes the results JSON of BENCHMARKS.md after every row (and on SIGTERM, the row it was in,
marked with an ``error``); ``--resume`` skips the rows already measured in ``--out``.
"""
from __future__ import annotations

import argparse
import faulthandler
import copy
import datetime
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import warnings

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)
warnings.filterwarnings("ignore")

import kilnrt  # noqa: E402
from kilnrt.builder.timing import event_median_ms, time_cuda_graph  # noqa: E402
from measure import Stopped, code_commit, kilnrt_times, rel_l2, results_header, stop_on_sigterm  # noqa: E402
from zoo_models import ZOO  # noqa: E402

RESULTS = os.path.join(HERE, "results")
PEERS = ("eager", "default", "max")
# (peer, torch.compile mode, the row's key stem)
COMPILE_PEERS = (("default", "default", "torch_compile_default"), ("max", "max-autotune-no-cudagraphs", "torch_compile"))
PEER_TIMEOUT_S = 1800   # a peer process's longest silence (max-autotune compiles for minutes)


def first_output(out):
    if isinstance(out, dict):
        out = list(out.values())
    return out[0] if isinstance(out, (tuple, list)) else out


def export_onnx(model: torch.nn.Module, inputs: dict[str, torch.Tensor], path: str) -> str:
    """Export with PyTorch's default exporter; the TorchScript exporter (opset 17) where it fails.
    Returns which one wrote the file."""
    args = tuple(inputs.values())
    names = list(inputs)
    try:
        torch.onnx.export(model, args, path, input_names=names, dynamo=True, optimize=True, verbose=False)
        return "dynamo"
    except Exception as exc:  # noqa: BLE001 - recorded; the older exporter gets its chance
        print(f"  dynamo export failed ({type(exc).__name__}: {str(exc).splitlines()[0][:160]}); "
              "TorchScript exporter", flush=True)
    torch.onnx.export(model, args, path, input_names=names, opset_version=17, dynamo=False,
                      do_constant_folding=True)
    return "torchscript"


def peer_inputs(inputs: dict[str, torch.Tensor], cnn: bool) -> tuple:
    out = []
    for v in inputs.values():
        if v.is_floating_point():
            v = v.half()
            if cnn and v.dim() == 4:
                v = v.contiguous(memory_format=torch.channels_last)
        out.append(v)
    return tuple(out)


def stem(name: str, batch: int) -> str:
    return f"{name}-b{batch}"


def peer_worker(name: str, batch: int, peers: tuple[str, ...], folder: str, conn) -> None:
    """One row's peers, in a process of their own.  First it exports the row's ONNX file, saves
    its inputs and the FP32 model's output, and compiles each torch.compile peer, then sends
    ``("ready", fields)``; it keeps the compiled models and waits.  On ``("time", iters)`` it
    times eager and the compiled peers and sends ``("timed", fields)``.  A failure sends
    ``("error", text)``.  Compiled once and timed later, in its turn, with nothing else running."""
    warnings.filterwarnings("ignore")
    try:
        entry = ZOO[name]
        info: dict = {}
        model32, inputs = entry.make(batch)
        # the peers' copy, taken before any forward: a module may cache float32 values in its
        # first eval run (timm's LeViT caches its attention biases), which .half() leaves float32
        fresh = entry.peer(model32) if entry.peer else copy.deepcopy(model32)
        with torch.no_grad():
            ref = first_output(model32(*inputs.values())).float()
        torch.save({"inputs": {k: v.cpu() for k, v in inputs.items()}, "ref": ref.cpu()},
                   os.path.join(folder, stem(name, batch) + ".pt"))
        path = os.path.join(folder, stem(name, batch) + ".onnx")
        t0 = time.perf_counter()
        with torch.no_grad():
            info["exporter"] = export_onnx(model32, inputs, path)
        info["export_s"] = round(time.perf_counter() - t0, 1)
        del model32   # the FP32 model's part is done: it would hold GPU memory while peers compile and time
        model = fresh.half()
        if entry.cnn:
            model = model.to(memory_format=torch.channels_last)
        args = peer_inputs(inputs, entry.cnn)
        compiled = {}
        with torch.no_grad():
            info["eager_relerr"] = rel_l2(first_output(model(*args)).float(), ref)
            for peer, mode, key in COMPILE_PEERS:
                if peer in peers:
                    t0 = time.perf_counter()
                    compiled[key] = torch.compile(model, mode=mode)
                    compiled[key](*args)
                    torch.cuda.synchronize()
                    info[key + "_s"] = round(time.perf_counter() - t0, 1)
        conn.send(("ready", info))
        command, iters = conn.recv()
        timed: dict = {}
        with torch.no_grad():
            if "eager" in peers:
                timed["torch_eager_ms"], timed["torch_eager_graph"] = time_peer(lambda: model(*args), iters, print)
            for key, fn in compiled.items():
                timed[key + "_ms"], timed[key + "_graph"] = time_peer(lambda: fn(*args), iters, print)
        conn.send(("timed", timed))
    except Exception as exc:  # noqa: BLE001 - the row records it
        traceback.print_exc()
        conn.send(("error", f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"))
    finally:
        conn.close()


def kilnrt_child(folder: str, row_stem: str, iters: int) -> None:
    """In a fresh process (an empty Triton cache, no timing cache): kilnrt's cold build of the
    row's ONNX file in FP16 with the default options, its error and its timings, written to
    ``<stem>.kilnrt.json``."""
    faulthandler.enable()   # a crash in a driver or library call still says where
    saved = torch.load(os.path.join(folder, row_stem + ".pt"))
    t0 = time.perf_counter()
    engine = kilnrt.build(os.path.join(folder, row_stem + ".onnx"), device="cuda", fp16=True)
    row = {"build_s": round(time.perf_counter() - t0, 2), "engine_layers": len(engine.layers)}
    feeds = {k: saved["inputs"][k].cuda().contiguous() for k in engine.input_names}
    out = engine.run(feeds)
    row["relerr"] = rel_l2(out[engine.output_names[0]].float(), saved["ref"].cuda())
    row.update(kilnrt_times(engine, feeds, iters))
    with open(os.path.join(folder, row_stem + ".kilnrt.json"), "w") as f:
        json.dump(row, f)
    print(f"kilnrt child: {row_stem} written", flush=True)   # a crash after this is at exit


def run_kilnrt(folder: str, row_stem: str, iters: int, timeout_s: float) -> dict:
    """:func:`kilnrt_child` in a fresh process with its own empty Triton cache."""
    out = os.path.join(folder, row_stem + ".kilnrt.json")
    if os.path.exists(out):
        os.remove(out)
    with tempfile.TemporaryDirectory() as triton_cache:
        env = dict(os.environ, TRITON_CACHE_DIR=triton_cache)
        child = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--kilnrt-child", row_stem,
                                  "--folder", folder, "--iters", str(iters)], env=env)
        try:
            rc = child.wait(timeout=timeout_s)
        except BaseException:   # Stopped, a timeout: the child goes too
            child.kill()
            child.wait()
            raise
    if rc != 0 or not os.path.exists(out):
        raise RuntimeError(f"kilnrt's build or run failed (exit {rc}; its traceback is above)")
    with open(out) as f:
        return json.load(f)


def time_peer(fn, iters: int, log) -> tuple[float, bool]:
    """(median ms, whether it was replayed from a CUDA graph): a CUDA graph as for every peer;
    where the peer cannot be captured (a model that copies from pageable host memory on every
    call, as the eager transformers decoders and wav2vec2 do), CUDA events around eager calls,
    which then count the peer's launch overhead too (the row says so: ``<peer>_graph`` is
    false).  Making such copies read pinned tensors instead, through a Python dispatch mode,
    did not make them capturable (2026-12-02, H200; why was not looked into), so it is gone.
    Their torch.compile peers capture."""
    try:
        return round(time_cuda_graph(fn, iters, warmup=10), 4), True
    except Exception as exc:  # noqa: BLE001 - recorded in the row
        torch.cuda.synchronize()
        log(f"  cannot be captured ({type(exc).__name__}: {str(exc).splitlines()[0][:120]}); timed with events")
    for _ in range(10):
        fn()
    return round(event_median_ms(fn, iters), 4), False


def bench_row(row: dict, name: str, batch: int, peers: tuple[str, ...], iters: int, folder: str, conn,
              log) -> None:
    """One row, once its peer process is ready (``conn``): kilnrt in a fresh process, then the
    peers in theirs."""
    entry = ZOO[name]
    row.update(family=entry.family, seq=entry.seq, tuned=entry.tuned, precision="fp16", profile="static",
               torch=torch.__version__)
    row.update(run_kilnrt(folder, stem(name, batch), iters, timeout_s=900))
    log(f"  kilnrt {row['kilnrt_ms']:.3f} ms (run {row['kilnrt_run_ms']:.3f}, graph {row['kilnrt_graph_ms']:.3f}, "
        f"host {row['host_us']:.0f} us), relerr {row['relerr']:.1e}, cold build {row['build_s']} s")
    # FP16's bar: 1e-2, or no worse than eager FP16's own error (random weights can amplify rounding)
    row["correct"] = row["relerr"] < 1e-2 or row["relerr"] <= 1.5 * row["eager_relerr"]
    for key in ("torch_eager_ms", "torch_compile_default_ms", "torch_compile_ms"):
        row[key] = None
    conn.send(("time", iters))
    if not conn.poll(PEER_TIMEOUT_S):
        raise RuntimeError(f"the peers did not answer within {PEER_TIMEOUT_S} s")
    kind, fields = conn.recv()
    if kind != "timed":
        row["peer_error"] = fields
        log(f"  peers failed: {fields}")
    else:
        row.update(fields)
        log("  " + ", ".join(f"{k[:-3]} {v:.3f} ms" for k, v in fields.items() if k.endswith("_ms") and v))
    row["compile_s"] = row.get("torch_compile_s")
    for key, peer in (("speedup_vs_eager", "torch_eager_ms"), ("speedup_vs_compile", "torch_compile_ms"),
                      ("speedup_vs_compile_default", "torch_compile_default_ms")):
        if row.get(peer):
            row[key] = round(row[peer] / row["kilnrt_ms"], 3)


def prepare_all(todo: list[tuple[str, int]], peers: tuple[str, ...], folder: str, jobs: int, log,
                worker=None) -> tuple[dict, list]:
    """A peer process (:func:`peer_worker`) for every row, ``jobs`` of them preparing at once;
    returns ({(name, batch): (fields, connection, process) or an exception}, the processes).  All are
    ready before any row is timed, so nothing else loads the CPU or the GPU while kilnrt builds
    and the peers are timed; the caller stops the processes (:func:`stop_all`)."""
    import multiprocessing
    from multiprocessing.connection import wait

    ctx = multiprocessing.get_context("spawn")
    # inductor's compile workers: the cores shared among the rows preparing at once (the
    # processes inherit this environment)
    os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", str(max(1, (os.cpu_count() or 1) // max(1, jobs))))
    pending, running, done, procs = list(todo), {}, {}, []
    try:
        while pending or running:
            while pending and len(running) < max(1, jobs):
                key = pending.pop(0)
                parent, child = ctx.Pipe()
                proc = ctx.Process(target=worker or peer_worker, args=(*key, peers, folder, child))
                proc.start()
                child.close()
                procs.append(proc)
                running[parent] = (key, proc)
            answered = wait(list(running), timeout=PEER_TIMEOUT_S)
            if not answered:   # none said anything for that long: those rows fail, the rest go on
                for conn, (key, proc) in running.items():
                    proc.kill()
                    done[key] = RuntimeError(f"no answer from its peer process within {PEER_TIMEOUT_S} s")
                running.clear()
            for conn in answered:
                key, proc = running.pop(conn)
                try:
                    kind, fields = conn.recv()
                except EOFError:
                    proc.join(5)
                    kind, fields = "error", f"its process ended (exit code {proc.exitcode})"
                if kind == "ready":
                    done[key] = (fields, conn, proc)
                    log(f"prepared {key[0]} batch {key[1]}: {fields}")
                else:
                    done[key] = RuntimeError(fields)
                    proc.join(5)
                    log(f"prepare {key[0]} batch {key[1]} failed: {fields}")
    except BaseException:
        stop_all(procs)
        raise
    return done, procs


def stop_all(procs: list) -> None:
    for proc in procs:
        if proc.is_alive():
            proc.kill()
        proc.join(5)


def resume_mismatch(path: str, commit: str | None, gpu: str) -> str | None:
    """Why the rows of ``path`` cannot be resumed by a run of ``commit`` on ``gpu``, or None
    (also when there is no file yet).  A run whose commit is unknown (no git, no
    ``KILNRT_COMMIT``) or has uncommitted changes (``+changes``) cannot prove it is the same
    code, so it resumes nothing."""
    if not os.path.exists(path):
        return None
    if commit is None or commit.endswith("+changes"):
        return (f"this run's code is {'not known' if commit is None else commit} (set KILNRT_COMMIT, "
                "or commit the changes), so it cannot be shown to be the code that began " + path)
    try:
        with open(path) as f:
            doc = json.load(f)
    except (OSError, ValueError) as exc:
        return f"{path} cannot be read as a results file ({exc})"
    if doc.get("kilnrt_commit") != commit:
        return f"{path} was begun at commit {doc.get('kilnrt_commit')}, and this is {commit}"
    if doc.get("gpu") != gpu:
        return f"{path} was begun on a {doc.get('gpu')}, and this is a {gpu}"
    return None


def load_resumed(path: str) -> list[dict]:
    """The rows of ``path`` measured without an error, each naming the commit and GPU that
    measured it (a row from before rows named them takes its file's)."""
    if not os.path.exists(path):
        return []
    with open(path) as f:
        doc = json.load(f)
    rows = [r for r in doc.get("rows", []) if "error" not in r]
    for r in rows:
        r.setdefault("kilnrt_commit", doc.get("kilnrt_commit"))
        r.setdefault("gpu", doc.get("gpu"))
    return rows


def load_planned(path: str) -> list[list]:
    """The ``[model, batch]`` rows that the runs writing ``path`` set out to measure."""
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [list(key) for key in json.load(f).get("planned", [])]


def write_results(path: str, rows: list[dict], planned: list[list] | None = None) -> None:
    """The results file, with the rows measured so far and the ``planned`` ones (those a
    stopped run did not reach are missing from ``rows``); its ``kilnrt_commit`` (and ``gpu``)
    is ``"mixed"`` when its rows name several (a run resumed with ``--resume-any-commit``)."""
    doc = {**results_header("zoo", torch.cuda.get_device_name()), "planned": planned or [], "rows": rows}
    for key in ("kilnrt_commit", "gpu"):
        named = {r[key] for r in rows if key in r}
        if len(named | {doc[key]}) > 1:
            doc[key] = "mixed"
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump(doc, f, indent=1)
    os.replace(path + ".tmp", path)


def print_table(rows: list[dict]) -> None:
    fmt = lambda v, spec: "-" if v is None else format(v, spec)  # noqa: E731
    print(f"{'model':20} {'batch':>5} {'eager':>8} {'default':>8} {'max-at':>8} {'kilnrt':>8} {'run':>8} "
          f"{'host us':>7} {'vs max':>6} {'relerr':>8} {'build s':>7}")
    for r in rows:
        if "kilnrt_ms" not in r:
            print(f"{r['model']:20} {r['batch']:>5} ERROR {r.get('error', '')[:90]}")
            continue
        print(f"{r['model']:20} {r['batch']:>5} {fmt(r.get('torch_eager_ms'), '8.3f')} "
              f"{fmt(r.get('torch_compile_default_ms'), '8.3f')} {fmt(r.get('torch_compile_ms'), '8.3f')} "
              f"{r['kilnrt_ms']:8.3f} {fmt(r.get('kilnrt_run_ms'), '8.3f')} {fmt(r.get('host_us'), '7.0f')} "
              f"{fmt(r.get('speedup_vs_compile'), '6.2f')} {r['relerr']:8.1e} {r['build_s']:7.1f}"
              + (f"  ({r['error'][:60]})" if "error" in r else ""))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default=",".join(ZOO), help="comma list of: " + ", ".join(ZOO))
    p.add_argument("--batches", default="both", choices=["1", "throughput", "both"])
    p.add_argument("--peers", default=",".join(PEERS), help="comma list of: " + ", ".join(PEERS))
    p.add_argument("--iters", type=int, default=100)
    p.add_argument("--out", default=None)
    p.add_argument("--resume", action="store_true",
                   help="skip the rows --out already holds without an error (the file must be this commit's, "
                        "on this GPU model)")
    p.add_argument("--resume-any-commit", action="store_true",
                   help="with --resume: go on with a file another commit or GPU model began (each row names its own)")
    p.add_argument("--prepare-jobs", type=int, default=4,
                   help="rows prepared at once (export, inductor cache warm-up), each in its own process")
    p.add_argument("--folder", default=None, help="where prepared rows are kept (default: a temporary folder)")
    p.add_argument("--kilnrt-child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.kilnrt_child:
        kilnrt_child(args.folder, args.kilnrt_child, args.iters)
        return 0
    names = [n for n in args.models.split(",") if n]
    unknown = [n for n in names if n not in ZOO]
    if unknown:
        p.error(f"unknown model(s) {unknown}; the zoo has: {', '.join(ZOO)}")
    peers = tuple(x for x in args.peers.split(",") if x)
    if set(peers) - set(PEERS):
        p.error(f"--peers takes {', '.join(PEERS)}")
    gpu = torch.cuda.get_device_name().replace(" ", "_")
    out = args.out or os.path.join(RESULTS, f"{datetime.date.today().isoformat()}-{gpu}-zoo.json")
    if args.resume_any_commit and not args.resume:
        p.error("--resume-any-commit goes with --resume")
    commit, device = code_commit(), torch.cuda.get_device_name()   # once: code_commit may run git
    if args.resume and not args.resume_any_commit:
        mismatch = resume_mismatch(out, commit, device)
        if mismatch:
            p.error(f"--resume: {mismatch}; one results file holds one commit's run on one GPU model. "
                    "Give another --out, or pass --resume-any-commit to mix them (each row records its commit)")
    rows = load_resumed(out) if args.resume else []
    planned = load_planned(out) if args.resume else []
    done = {(r["model"], r["batch"]) for r in rows}
    todo = []
    for name in names:
        entry = ZOO[name]
        batches = {"1": entry.batches[:1], "throughput": entry.batches[1:], "both": entry.batches}[args.batches]
        todo += [(name, b) for b in batches if (name, b) not in done]
        planned += [[name, b] for b in batches if [name, b] not in planned]
    log = lambda m: print(m, flush=True)  # noqa: E731
    folder = args.folder or tempfile.mkdtemp(prefix="kilnrt-zoo-")
    os.makedirs(folder, exist_ok=True)
    previous = stop_on_sigterm()
    stopped, procs = False, []
    try:
        t0 = time.perf_counter()
        prepared, procs = prepare_all(todo, peers, folder, args.prepare_jobs, log) if todo else ({}, [])
        log(f"prepared {len(todo)} rows in {time.perf_counter() - t0:.0f} s")
        for name, batch in todo:
            row = {"model": name, "batch": batch, "kilnrt_commit": commit, "gpu": device}
            rows.append(row)
            log(f"{name} batch {batch}")
            try:
                ready = prepared[(name, batch)]
                if isinstance(ready, BaseException):
                    row["error"] = f"preparing: {ready}"
                    write_results(out, rows, planned)
                    continue
                info, conn, proc = ready
                row.update(info)
                try:
                    bench_row(row, name, batch, peers, args.iters, folder, conn, log)
                finally:   # its GPU memory and compile workers go before the next row is timed
                    stop_all([proc])
            except Stopped as exc:
                row["error"] = f"{exc} before this row finished"
                stopped = True
            except Exception as exc:  # noqa: BLE001 - report it and go on with the other rows
                traceback.print_exc()
                row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
            write_results(out, rows, planned)
            if stopped:
                break
    except Stopped as exc:
        stopped = True
        log(f"{exc} while preparing")
    finally:
        stop_all(procs)
        signal.signal(signal.SIGTERM, previous)
    print(f"\nresults: {out}\n")
    print_table(rows)
    return 124 if stopped else 0


if __name__ == "__main__":
    sys.exit(main())
