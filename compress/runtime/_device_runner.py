"""The process that ``compress bench`` measures: load one artifact in one runtime, time it, report JSON.

This file is run as a script, locally (one fresh ``python _device_runner.py MODE`` per measurement) and on
remote devices (copied there over ssh). So it imports only the standard library, numpy and the runtime it is
asked for, and must keep working on Python 3.8: it never imports ``compress`` except to load a PyTorch state
dict, which needs the model's architecture.

Modes (the request is JSON on stdin, the answer one JSON object on the original stdout):

* ``measure``: create the session, warm up, time ``runs`` runs (or ``seconds``), report the raw per-run
  samples, load and first-run times, peak resident memory and the file size.
* ``evaluate``: run every sample of ``data`` (``.npz`` with ``x``, or one array per model input named after
  it or ``x0, x1, ...``, and optional ``y``) and report the top-1 class per sample and the accuracy when labels
  are given.
* ``describe``: this machine's description (the package's ``machine.py`` when it was copied beside this file).

Errors come back as ``{"ok": false, "error": {"kind", "message", "module"}}``: ``kind`` is one of
``ModelLoadError``, ``DataError``, ``ConfigError``, ``MissingModule`` (``module`` names it) or ``Internal``.
"""

# This script must run on the Python of small devices (3.8+): zip() has no strict= there.
# ruff: noqa: B905

from __future__ import annotations

import json
import os
import platform
import sys
import time
import traceback

RUNTIMES = ("ort", "litert", "litert-noxnnpack", "torch", "torch-compile", "synthetic")


class RunnerError(Exception):
    """A failure the user can fix; ``kind`` names the compress error class the parent raises."""

    def __init__(self, kind: str, message: str, module: str | None = None):
        super().__init__(message)
        self.kind, self.module = kind, module


def _import(module: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise RunnerError("MissingModule", f"{module} cannot be imported ({exc})", module) from exc


# --------------------------------------------------------------------------------------------- memory
def _proc_status_bytes(key: str):
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def peak_rss_bytes():
    """Peak resident memory of this process image. Linux's ``VmHWM``; ``ru_maxrss`` only as a fallback,
    because Linux carries ``ru_maxrss`` over fork + exec (a child would report a bigger parent's peak)."""
    hwm = _proc_status_bytes("VmHWM:")
    if hwm is not None:
        return hwm
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


# ------------------------------------------------------------------------------------------- sessions
class _Input:
    """One model input: name, shape (None for a dynamic dimension), numpy dtype, (scale, zero point) or None."""

    def __init__(self, name, shape, dtype, quant=None):
        self.name, self.shape, self.dtype, self.quant = name, list(shape), dtype, quant


class _OrtSession:
    def __init__(self, path, threads, np):
        ort = _import("onnxruntime")
        self.version = ort.__version__
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1  # sequential graph execution: `threads` is the whole budget
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self.sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime has its own exception types for corrupt / unsupported files
            raise RunnerError("ModelLoadError", "onnxruntime cannot load it: " + _first_line(exc)) from exc
        types = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
                 "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int8)": np.int8,
                 "tensor(uint8)": np.uint8, "tensor(bool)": np.bool_}
        self.inputs = []
        for m in self.sess.get_inputs():
            if m.type not in types:
                raise RunnerError("ConfigError", f"input {m.name!r} has type {m.type}, which bench cannot feed")
            dims = [d if isinstance(d, int) and d >= 0 else None for d in m.shape]
            self.inputs.append(_Input(m.name, dims, types[m.type]))

    def bind(self, feeds):
        run, names = self.sess.run, [i.name for i in self.inputs]
        feed = dict(zip(names, feeds))
        return lambda: run(None, feed)

    def first_output(self, result):
        return result[0]


class _LiteRTSession:
    def __init__(self, path, threads, np, xnnpack=True):
        mod = _import("ai_edge_litert.interpreter")
        try:
            from importlib.metadata import version

            self.version = version("ai-edge-litert")
        except Exception:
            self.version = None
        kwargs = {"model_path": path, "num_threads": threads}
        if not xnnpack:  # the builtin kernels only: what a device without the XNNPACK delegate runs
            kwargs["experimental_op_resolver_type"] = mod.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
        try:
            self.it = mod.Interpreter(**kwargs)
            self.it.allocate_tensors()
        except (RuntimeError, ValueError) as exc:
            raise RunnerError("ModelLoadError", "LiteRT cannot load it: " + _first_line(exc)) from exc
        self.np = np
        self.inputs = []
        for d in self.it.get_input_details():
            sig = d.get("shape_signature", d["shape"])
            dims = [int(s) if int(s) >= 0 else None for s in sig]
            scale, zp = d["quantization"]
            quant = (float(scale), int(zp)) if d["dtype"] in (np.int8, np.uint8) and scale else None
            self.inputs.append(_Input(d["name"], dims, d["dtype"], quant))
        self._indices = [d["index"] for d in self.it.get_input_details()]

    def resize(self, shapes):
        """Give the interpreter the concrete input shapes (batch > the file's, or dynamic dimensions)."""
        current = [list(d["shape"]) for d in self.it.get_input_details()]
        if all(list(s) == c for s, c in zip(shapes, current)):
            return
        try:
            for index, shape in zip(self._indices, shapes):
                self.it.resize_tensor_input(index, list(shape))
            self.it.allocate_tensors()
        except (RuntimeError, ValueError) as exc:
            raise RunnerError("DataError", f"LiteRT cannot run this file with input shapes {shapes} "
                                           f"({_first_line(exc)}); export it with that batch size") from exc

    def bind(self, feeds):
        self.resize([f.shape for f in feeds])
        for index, x in zip(self._indices, feeds):
            self.it.set_tensor(index, x)
        return self.it.invoke  # inputs are set once; the timed call is invoke() alone, as benchmark_model does

    def first_output(self, _result):
        d = self.it.get_output_details()[0]
        y = self.it.get_tensor(d["index"])
        scale, zp = d["quantization"]
        if d["dtype"] in (self.np.int8, self.np.uint8) and scale:
            y = (y.astype(self.np.float32) - zp) * scale
        return y


class _TorchSession:
    def __init__(self, path, threads, np, arch=None, compile_=False):
        torch = _import("torch")
        self.torch, self.version = torch, torch.__version__
        torch.set_num_threads(threads)
        try:
            torch.set_num_interop_threads(1)
        except RuntimeError:  # already set (only possible before any parallel work)
            pass
        shapes = []
        try:
            if path.endswith(".pt2"):
                program = torch.export.load(path)
                model = program.module()
                user = set(program.graph_signature.user_inputs)
                for node in program.graph.nodes:
                    if node.op == "placeholder" and node.name in user:
                        val = node.meta.get("val")
                        dims = [int(d) if isinstance(d, int) else None for d in val.shape] if val is not None else []
                        dtype = str(val.dtype).replace("torch.", "") if val is not None else "float32"
                        shapes.append((node.name, dims, dtype))
            else:
                if not arch:
                    raise RunnerError("ConfigError", "a PyTorch state dict needs its architecture; pass --arch "
                                                     "MODULE:CALLABLE (or benchmark a .pt2 / .onnx file)")
                try:
                    from compress.io import load_model
                except ImportError as exc:
                    raise RunnerError("MissingModule", "loading a state dict needs the compress package where "
                                                       "it runs; benchmark a .pt2 or .onnx file instead",
                                      "compress") from exc
                model = load_model(path, arch=arch)
                # Named after forward's parameters, so --data arrays named after them feed the right input.
                import inspect

                params = [p for p in inspect.signature(model.forward).parameters.values()
                          if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty]
                if len(params) > 1:
                    shapes.extend((p.name, [], "float32") for p in params)
                else:
                    shapes.append(("input", [], "float32"))
        except RunnerError:
            raise
        except Exception as exc:
            raise RunnerError("ModelLoadError", "torch cannot load it: " + _first_line(exc)) from exc
        if hasattr(model, "eval") and not path.endswith(".pt2"):
            model.eval()
        self.model = torch.compile(model) if compile_ else model
        self.inputs = [_Input(n, d, getattr(np, t, np.float32)) for n, d, t in shapes]

    def bind(self, feeds):
        torch, model = self.torch, self.model
        tensors = [torch.from_numpy(x) for x in feeds]

        def run():
            with torch.inference_mode():
                return model(*tensors)

        return run

    def first_output(self, result):
        while isinstance(result, (list, tuple)):
            result = result[0]
        return result.detach().numpy()


class _SyntheticSession:
    """A stand-in model with a known delay distribution (tests of the statistics through real processes).

    The artifact is JSON: ``{"uniform_ms": [low, high], "seed": 0}``; every run waits for the next delay drawn
    from that distribution.
    """

    version = "synthetic"

    def __init__(self, path, np):
        try:
            with open(path) as f:
                spec = json.load(f)
            low, high = (float(v) / 1e3 for v in spec["uniform_ms"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise RunnerError("ModelLoadError", "not a synthetic model spec: " + _first_line(exc)) from exc
        self.rng, self.low, self.high = np.random.default_rng(int(spec.get("seed", 0))), low, high
        self.inputs = []

    def bind(self, _feeds):
        rng, low, high, clock, sleep = self.rng, self.low, self.high, time.perf_counter, time.sleep

        def run():
            end = clock() + rng.uniform(low, high)
            # Sleep through most of the delay, spin the last 0.3 ms: a process woken from sleep is scheduled
            # at once even on a busy machine, whereas a long spin is descheduled and overshoots by a time slice.
            if end - clock() > 3e-4:
                sleep(end - clock() - 3e-4)
            while clock() < end:
                pass

        return run


def open_session(request, np):
    """Load the artifact in the requested runtime. Returns the session object."""
    runtime, path, threads = request["runtime"], request["path"], int(request.get("threads", 1))
    if runtime not in RUNTIMES:
        raise RunnerError("ConfigError", f"unknown runtime {runtime!r}; use one of {', '.join(RUNTIMES)}")
    if threads < 1:
        raise RunnerError("ConfigError", f"threads must be >= 1, got {threads}")
    if not os.path.isfile(path):
        raise RunnerError("ModelLoadError", f"{path} does not exist")
    if runtime == "synthetic":
        return _SyntheticSession(path, np)
    if runtime == "ort":
        return _OrtSession(path, threads, np)
    if runtime in ("litert", "litert-noxnnpack"):
        return _LiteRTSession(path, threads, np, xnnpack=runtime == "litert")
    return _TorchSession(path, threads, np, arch=request.get("arch"), compile_=runtime == "torch-compile")


# --------------------------------------------------------------------------------------------- inputs
def _concrete_shape(inp, request, index, batch):
    """The input's shape with dynamic dimensions filled: --input-shape first, else batch for dimension 0."""
    given = request.get("input_shapes") or {}
    shape = given.get(inp.name) or (given.get("") if index == 0 else None)
    if shape is not None:
        shape = [int(d) for d in shape]
        fixed = [(i, d) for i, d in enumerate(inp.shape) if d is not None]
        if inp.shape and (len(shape) != len(inp.shape) or any(shape[i] != d for i, d in fixed)):
            raise RunnerError("DataError", f"--input-shape {shape} does not fit input {inp.name!r} of shape "
                                           f"{_fmt(inp.shape)}; give the dimensions the file leaves open")
        return shape
    if not inp.shape:
        raise RunnerError("ConfigError", f"the shape of input {inp.name!r} is unknown; pass --input-shape")
    out = list(inp.shape)
    if out[0] is None:
        out[0] = batch
    open_dims = [i for i, d in enumerate(out) if d is None]
    if open_dims:
        raise RunnerError("ConfigError", f"input {inp.name!r} has dynamic dimensions {_fmt(inp.shape)}; pass "
                                         "--input-shape with concrete sizes")
    if batch != 1 and out[0] != batch:
        out[0] = batch  # LiteRT can resize a fixed batch; onnxruntime refuses later with a clear message
    return out


def _to_input_dtype(x, inp, np):
    if inp.quant is not None:  # an int8 / uint8 model input: quantize with the file's own parameters
        scale, zp = inp.quant
        info = np.iinfo(inp.dtype)
        x = np.clip(np.round(x / scale) + zp, info.min, info.max)
    return np.ascontiguousarray(np.asarray(x).astype(inp.dtype))


def _check_fits(x, inp, what):
    want = inp.shape[1:]
    got = list(x.shape[1:])
    if inp.shape and (len(got) != len(want) or any(w is not None and w != g for w, g in zip(want, got))):
        raise RunnerError("DataError", f"{what} has per-sample shape {got} but input {inp.name!r} takes "
                                       f"{_fmt(want)}; pass data made for this model")


def load_data(path, np):
    """The input arrays (every array but ``y``, by name, in file order) and ``y`` (or None) of an .npz file."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            names = [n for n in npz.files if n != "y"]
            if not names:
                raise RunnerError("DataError", f"{path} has no input arrays (found {npz.files}); save inputs as x, "
                                               "or named after the model's inputs")
            return {n: npz[n] for n in names}, (npz["y"] if "y" in npz.files else None)
    except RunnerError:
        raise
    except Exception as exc:
        raise RunnerError("DataError", f"cannot read {path} as .npz ({_first_line(exc)})") from exc


def _plain_name(name):
    """A file's input name as the model's code wrote it (TF-converted files say 'serving_default_ids:0')."""
    name = name.split(":")[0]
    return name[len("serving_default_"):] if name.startswith("serving_default_") else name


def _positional(names):
    """``x0, x1, ...`` (exactly 0..k-1, any order) → the names in index order; else None."""
    idx = {}
    for n in names:
        if not (n.startswith("x") and n[1:].isdigit()):
            return None
        idx[int(n[1:])] = n
    return [idx[i] for i in range(len(idx))] if sorted(idx) == list(range(len(idx))) else None


def match_inputs(inputs, arrays):
    """The data arrays in the order of the model's inputs: by name, else ``x0, x1, ...`` by position; one
    array feeds a one-input model whatever its name."""
    names = list(arrays)
    wanted = [_plain_name(i.name) for i in inputs]
    if len(inputs) == 1 and len(names) == 1:
        return [arrays[names[0]]]
    if sorted(wanted) == sorted(names):
        return [arrays[n] for n in wanted]
    ordered = _positional(names)
    if ordered is not None and len(ordered) == len(inputs):
        return [arrays[n] for n in ordered]
    raise RunnerError("DataError", f"the model takes inputs {', '.join(wanted)} but --data has "
                                   f"{', '.join(names)}; name the arrays after the model's inputs (or x0, x1, ... in "
                                   "order)")


def make_feeds(session, request, np):
    """Inputs for the timed runs: the first ``batch`` samples of the data, or seeded random arrays."""
    batch = int(request.get("batch", 1))
    inputs = session.inputs
    if request.get("data"):
        arrays, _ = load_data(request["data"], np)
        xs = match_inputs(inputs, arrays)
        for x, inp in zip(xs, inputs):
            if inp.shape:
                _check_fits(x, inp, "--data x" if len(xs) == 1 else f"--data {inp.name}")
        if xs[0].shape[0] < batch:
            raise RunnerError("DataError", f"--data has {xs[0].shape[0]} samples, fewer than --batch {batch}")
        return [_to_input_dtype(x[:batch], inp, np) for x, inp in zip(xs, inputs)]
    rng = np.random.default_rng(0)
    feeds = []
    for i, inp in enumerate(inputs):
        shape = _concrete_shape(inp, request, i, batch)
        if np.issubdtype(np.dtype(inp.dtype), np.floating) or inp.quant is not None:
            x = rng.standard_normal(shape).astype(np.float32)
        else:  # token ids, masks: small non-negative integers are valid for any vocabulary
            x = rng.integers(0, 2, size=shape)
        feeds.append(_to_input_dtype(x, inp, np))
    return feeds


# ----------------------------------------------------------------------------------------------- modes
def _pin(threads):
    """Pin this process to ``threads`` cores: the highest-numbered usable ones (core 0 takes most interrupts)."""
    if not hasattr(os, "sched_setaffinity"):
        raise RunnerError("ConfigError", "--pin needs Linux (sched_setaffinity); drop --pin")
    usable = sorted(os.sched_getaffinity(0))
    if threads > len(usable):
        raise RunnerError("ConfigError", f"--pin with {threads} threads needs {threads} cores but {len(usable)} "
                                         "are usable; lower --threads or drop --pin")
    cpus = usable[-threads:]
    os.sched_setaffinity(0, set(cpus))
    return cpus


def measure(request):
    """Time one session; see the module docstring."""
    cpus = _pin(int(request.get("threads", 1))) if request.get("pin") else None
    t0 = time.perf_counter()
    np = _import("numpy")
    session_probe = time.perf_counter()
    session = open_session(request, np)
    load_s = time.perf_counter() - session_probe
    import_s = session_probe - t0  # numpy only; the runtime's import is part of load_s
    feeds = make_feeds(session, request, np)
    try:
        run = session.bind(feeds)
        t = time.perf_counter()
        run()
        first_run_s = time.perf_counter() - t
    except RunnerError:
        raise
    except Exception as exc:
        raise RunnerError("DataError", f"the model rejects inputs of shapes {[list(f.shape) for f in feeds]}: "
                                       + _first_line(exc) + "; pass --input-shape / --batch that fit") from exc
    warmup, runs, seconds = int(request.get("warmup", 10)), int(request.get("runs", 50)), request.get("seconds")
    for _ in range(max(warmup - 1, 0)):
        run()
    samples = []
    append, clock = samples.append, time.perf_counter
    deadline = None if seconds is None else clock() + float(seconds)
    # The timed loop is bare (one clock pair per run): the harness must add next to nothing to a 1 ms model.
    while len(samples) < runs or (deadline is not None and clock() < deadline):
        t = clock()
        run()
        append(clock() - t)
    return {
        "samples_s": samples,
        "load_s": load_s,
        "import_s": import_s,
        "first_run_s": first_run_s,
        "peak_rss_bytes": peak_rss_bytes(),
        "file_bytes": os.path.getsize(request["path"]),
        "input_shapes": [list(f.shape) for f in feeds],
        "runtime_version": session.version,
        "threads": int(request.get("threads", 1)),
        "cpus": cpus,
        "pid": os.getpid(),
    }


def evaluate(request):
    """Top-1 class of every sample in ``data``, and the accuracy when it has labels."""
    np = _import("numpy")

    session = open_session(request, np)
    arrays, y = load_data(request["data"], np)
    inputs = session.inputs
    xs = match_inputs(inputs, arrays)
    for x, inp in zip(xs, inputs):
        if inp.shape:
            _check_fits(x, inp, "--data x" if len(xs) == 1 else f"--data {inp.name}")
    n_all = len(xs[0])
    if any(len(x) != n_all for x in xs):
        raise RunnerError("DataError", f"--data inputs have different sample counts ({[len(x) for x in xs]}); "
                                       "give every input one row per sample")
    if y is not None and (y.ndim != 1 or len(y) != n_all):
        raise RunnerError("DataError", f"--data y has shape {list(y.shape)}; it must hold one label per sample "
                                       f"of the inputs ({n_all})")
    # A fixed batch in the file (TFLite) is kept: the last partial batch is padded and the padding dropped.
    fixed = [inp.shape[0] for inp in inputs if inp.shape and inp.shape[0] is not None]
    step = fixed[0] if fixed else max(int(request.get("batch", 1)), 64)
    preds = []
    for start in range(0, n_all, step):
        chunks = [x[start:start + step] for x in xs]
        n = len(chunks[0])
        if n < step and fixed:
            chunks = [np.concatenate([c, np.zeros((step - n,) + c.shape[1:], c.dtype)]) for c in chunks]
        run = session.bind([_to_input_dtype(c, inp, np) for c, inp in zip(chunks, inputs)])
        out = np.asarray(session.first_output(run()))
        preds.extend(int(p) for p in out.reshape(out.shape[0], -1)[:n].argmax(axis=1))
    result = {"predictions": preds, "samples": len(preds), "accuracy": None}
    if y is not None:
        result["accuracy"] = float(np.mean(np.asarray(preds) == y.astype(np.int64)))
    return result


def describe(_request):
    """This machine: the package's machine.py when it was copied beside this script, else the essentials."""
    here = os.path.dirname(os.path.abspath(__file__))
    path = os.path.join(here, "machine.py")
    if os.path.isfile(path):
        import importlib.util

        spec = importlib.util.spec_from_file_location("_compress_bench_machine", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module.machine_description()
    return {"cpu": {"model": platform.processor() or None, "arch": platform.machine(), "isa": [],
                    "logical_cores": os.cpu_count(), "usable_cores": os.cpu_count()},
            "os": {"system": platform.system(), "release": platform.release(), "platform": platform.platform()},
            "python": {"version": platform.python_version(), "implementation": platform.python_implementation()},
            "versions": {}, "git": None}


def _first_line(exc) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:300]


def _fmt(shape) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def main(argv) -> int:
    # Runtimes (LiteRT's INFO lines, native libraries) may print to fd 1: keep the real stdout for the answer
    # and send everything else to stderr.
    answer = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    modes = {"measure": measure, "evaluate": evaluate, "describe": describe}
    try:
        if len(argv) != 2 or argv[1] not in modes:
            raise RunnerError("ConfigError", f"usage: {argv[0]} {{{'|'.join(modes)}}} < request.json")
        request = json.loads(sys.stdin.read() or "{}")
        out = {"ok": True, "result": modes[argv[1]](request)}
    except RunnerError as exc:
        out = {"ok": False, "error": {"kind": exc.kind, "message": str(exc), "module": exc.module}}
    except BaseException as exc:  # a bug: bring the traceback back to the parent
        out = {"ok": False, "error": {"kind": "Internal", "message": f"{type(exc).__name__}: {_first_line(exc)}",
                                      "module": None, "traceback": traceback.format_exc()}}
    answer.write(json.dumps(out) + "\n")
    answer.flush()
    return 0


if __name__ == "__main__":
    # Run as a script, Python puts this file's folder first on sys.path; in the package that folder holds
    # modules (stats, report, ...) that must not shadow anything the runtimes import.
    if sys.path and os.path.abspath(sys.path[0] or ".") == os.path.dirname(os.path.abspath(__file__)):
        sys.path.pop(0)
    sys.exit(main(sys.argv))
