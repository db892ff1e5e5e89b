"""Pack what a bare GPU machine lacks for `scripts/gpu_smoke.py` into one folder (default `build/gpu-smoke/`).

The folder holds:

- `config.yaml`: the tiny profile's run config with the smoke test's model sizes and batch shapes;
- `models/<family>/`: a tiny policy checkpoint per chat family (`polyalign.tiny.CHAT_FAMILIES`), sized so that vLLM
  can load it (head dimension 64), and `models/mauve-featurizer/`, the tiny encoder the MAUVE featuriser uses;
- `data/{train,val,test}.parquet`: a seeded sample of each split of the tiny corpus, built offline from the bundled
  fixtures;
- `wheels/`: pure-Python wheels, at the versions installed here, of the packages the smoke test imports that the GPU
  image lacks or holds at a version that does not meet a requirement;
- `bundle.json` (what was packed, and why each wheel travels) and `RUN.md` (the command to run on the GPU machine).

Usage: `python scripts/gpu_smoke_bundle.py [--out build/gpu-smoke] [--image-packages pip-freeze.txt]`.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field, replace
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
MAX_MIB = 60  # what travels with the working tree to the GPU machine must stay small

# The GPU image the smoke test targets: Python 3.12.3, torch 2.11.0 built for CUDA 13. Names of every distribution
# it holds, and the versions known of some of them; `--image-packages` replaces both with a `pip freeze` of another.
IMAGE_PYTHON = "3.12.3"
IMAGE_PACKAGES = """
absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build certifi
charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core
cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock
flatbuffers flax fonttools formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx
huggingface-hub humanize hypothesis idna imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin
jaxlib jaxtyping jinja2 joblib kiwisolver lazy-loader lightning lightning-utilities linear-operator lineax
llvmlite lxml markdown markdown-it-py markupsafe matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack
multidict multipledispatch mypy-extensions nanobind narwhals networkx ninja numba numba-cuda numpy numpyro
nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime nvidia-cudnn-cu13 nvidia-cufft
nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13 nvidia-ml-py nvidia-nccl-cu13
nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir onnxruntime onnxscript opencv-python-headless
optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging pandas pathspec patsy peft pillow pip
pluggy portalocker prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments pyparsing
pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout pytest-xdist
python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu safetensors scikit-build-core
scikit-image scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools shellingham simplejson
six sortedcontainers statsmodels sympy tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl
tifffile tiktoken timm tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics torchvision
tqdm transformers treescope triton typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug
wheel wrapt xarray xxhash yarl zipp
"""
IMAGE_VERSIONS = {"accelerate": "1.15.0", "huggingface-hub": "1.33.0", "numpy": "2.5.2", "safetensors": "0.8.0",
                  "sentence-transformers": "6.0.1", "sentencepiece": "0.2.2", "tiktoken": "0.14.0",
                  "tokenizers": "0.23.2", "torch": "2.11.0", "torchaudio": "2.11.0", "torchmetrics": "1.9.0",
                  "torchvision": "0.26.0", "transformers": "5.17.0", "triton": "3.6.0"}
# environment markers of that machine, for the `; python_version < ...` parts of requirements
IMAGE_MARKERS = {"python_version": "3.12", "python_full_version": IMAGE_PYTHON, "implementation_name": "cpython",
                 "platform_python_implementation": "CPython", "sys_platform": "linux", "platform_system": "Linux",
                 "platform_machine": "x86_64", "os_name": "posix", "extra": ""}
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")

# The requirements of settings.ini that the smoke test's imports reach (training, generation, scoring); the others
# (jieba, mauve-text, POT, papermill, ...) serve stages the smoke test does not run.
SMOKE_ROOTS = ("torch", "transformers", "trl", "peft", "accelerate", "datasets", "tokenizers", "safetensors",
               "huggingface_hub", "numpy", "pandas", "pyarrow", "pyyaml", "tqdm")

FAMILIES = ("chatml", "llama3", "gemma2")
# Run config changes for the smoke test: vLLM-loadable sizes (head dim 128 / 2 = 64, one KV head), and batch shapes
# that use gradient accumulation (16 = 4 per device x 4 steps; 8 = 4 x 2) so the effective batch is really checked.
CONFIG_OVERRIDES = {
    "models.tiny.hidden_size": 128, "models.tiny.intermediate_size": 256, "models.tiny.num_hidden_layers": 2,
    "models.tiny.num_attention_heads": 2, "models.tiny.num_key_value_heads": 1,
    "models.tiny.max_position_embeddings": 1024,
    "sft.per_device_batch_size": 4, "sft.examples_per_step": 16,
    "preference.per_device_batch_size": 4, "preference.examples_per_step": 8,
}
MIN_HEAD_DIM = 64  # the smallest head size vLLM's attention kernels take


def image_packages(freeze_text: str | None = None) -> dict[str, str | None]:
    """{canonical name: version or None (present, version unknown)} of the GPU image: the built-in list, or the
    `name==version` lines of a `pip freeze` taken there."""
    if freeze_text is None:
        return {canonicalize_name(n): IMAGE_VERSIONS.get(canonicalize_name(n)) for n in IMAGE_PACKAGES.split()}
    out = {}
    for line in freeze_text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line or line.startswith("-"): continue
        name, _, version = line.partition("==")
        out[canonicalize_name(name.split(" @ ")[0])] = version.strip() or None
    return out


def root_requirements(settings_text: str, roots=SMOKE_ROOTS) -> list[str]:
    "The requirements of settings.ini's `requirements` line whose package is one of `roots`, in the order given there."
    line = next((l for l in settings_text.splitlines() if l.split("=", 1)[0].strip() == "requirements"), None)
    if line is None: raise ValueError("settings.ini has no `requirements` line")
    wanted = {canonicalize_name(r) for r in roots}
    reqs = [r for r in line.split("=", 1)[1].split() if canonicalize_name(Requirement(r).name) in wanted]
    missing = wanted - {canonicalize_name(Requirement(r).name) for r in reqs}
    if missing: raise ValueError(f"settings.ini requires none of {sorted(missing)}")
    return reqs


@dataclass(frozen=True)
class LocalDist:
    "An installed distribution: its version, its requirements, and whether its wheel is pure Python."
    version: str
    requires: tuple[str, ...] = ()
    pure: bool = True


def is_pure(wheel_text: str | None) -> bool:
    "True when a distribution's WHEEL file says purelib and every tag is `*-none-any` (one wheel fits any machine)."
    if not wheel_text: return False
    fields = [l.split(":", 1) for l in wheel_text.splitlines() if ":" in l]
    tags = [v.strip() for k, v in fields if k.strip() == "Tag"]
    purelib = any(k.strip() == "Root-Is-Purelib" and v.strip() == "true" for k, v in fields)
    return purelib and bool(tags) and all(t.endswith("-none-any") for t in tags)


def local_dists() -> dict[str, LocalDist]:
    "Every distribution installed in this environment, by canonical name."
    return {canonicalize_name(d.metadata["Name"]): LocalDist(d.version, tuple(d.requires or ()),
                                                             is_pure(d.read_text("WHEEL")))
            for d in metadata.distributions()}


@dataclass
class WheelPlan:
    "What travels (`carry`: name -> version, with why) and what cannot (`problems`: binary packages not met there)."
    carry: dict[str, str] = field(default_factory=dict)
    reasons: dict[str, str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


def _needed(req: Requirement) -> bool:
    return req.marker is None or req.marker.evaluate(IMAGE_MARKERS)


def _why_carry(name: str, specs: list[Requirement], image: dict[str, str | None]) -> str | None:
    "Why the image's copy of `name` will not do (None: it will)."
    if name not in image: return "not in the image"
    there = image[name]
    if there is None:  # present at an unknown version: only a requirement without a version bound is surely met
        bounded = [str(r.specifier) for r in specs if r.specifier]
        return f"version there unknown; needs {', '.join(bounded)}" if bounded else None
    failed = [str(r.specifier) for r in specs if not r.specifier.contains(Version(there), prereleases=True)]
    return f"{there} there; needs {', '.join(failed)}" if failed else None


def plan_wheels(requirements: list[str],               # root requirements (`root_requirements`)
                local: dict[str, LocalDist],           # what is installed here (`local_dists`)
                image: dict[str, str | None],          # what the GPU image holds (`image_packages`)
               ) -> WheelPlan:
    """The pure-Python distributions to carry, at the versions installed here: a root or a requirement of a carried
    distribution travels when the image lacks it or its version there misses a requirement (or is unknown while a
    requirement bounds it). Requirements of what the image keeps are the image's own business. A binary package that
    would have to travel is listed in `problems` instead (its wheel is large and built for one Python)."""
    roots = [Requirement(r) for r in requirements]
    carry: dict[str, str] = {}
    while True:  # carrying a distribution adds its requirements: repeat until nothing new must travel
        specs: dict[str, list[Requirement]] = {}
        edges = roots + [Requirement(r) for n in carry for r in local[n].requires]
        for req in filter(_needed, edges): specs.setdefault(canonicalize_name(req.name), []).append(req)
        plan = WheelPlan()
        for name, reqs in sorted(specs.items()):
            why = _why_carry(name, reqs, image)
            if why is None: continue
            if name not in local:
                plan.problems.append(f"{name}: {why}, and it is not installed here")
            elif not local[name].pure:
                plan.problems.append(f"{name} {local[name].version} (binary, not carried): {why}")
            else:
                plan.carry[name], plan.reasons[name] = local[name].version, why
        if plan.carry == carry: return plan
        carry = plan.carry


def wheel_key(filename: str) -> tuple[str, str]:
    "(canonical name, version) of a wheel file name."
    name, version, _, _ = parse_wheel_filename(filename)
    return str(name), str(version)


def download_wheels(carry: dict[str, str], dest: Path) -> list[Path]:
    """The wheels of `carry` in `dest` for the GPU image's Python: kept when already there, else fetched from the
    package index; wheels of other packages or versions are removed."""
    dest.mkdir(parents=True, exist_ok=True)
    have = {wheel_key(p.name): p for p in dest.glob("*.whl")}
    for key, p in have.items():
        if carry.get(key[0]) != key[1]: p.unlink()
    todo = [f"{n}=={v}" for n, v in sorted(carry.items()) if (n, v) not in have]
    if todo:
        platforms = [a for p in PLATFORMS for a in ("--platform", p)]
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                        "--python-version", IMAGE_PYTHON.rsplit(".", 1)[0], "--implementation", "cp", *platforms,
                        "-d", str(dest), *todo], check=True)
    wheels = sorted(dest.glob("*.whl"))
    got = {wheel_key(p.name) for p in wheels}
    lacking = sorted(f"{n}=={v}" for n, v in carry.items() if (n, v) not in got)
    if lacking: raise RuntimeError(f"no wheel downloaded for {', '.join(lacking)}")
    return wheels


def head_dim(spec) -> int:
    "The attention head size of a `TinyModelSpec`."
    return spec.hidden_size // spec.num_attention_heads


def build_models(cfg, out: Path) -> dict[str, str]:
    "A tiny policy per chat family under `out/models/<family>`, and the MAUVE featuriser's encoder; {name: path}."
    from polyalign.core import run_path
    from polyalign.metrics import mauve_featurizer_path
    from polyalign.tiny import build_tiny
    spec = cfg.models.tiny
    if head_dim(spec) < MIN_HEAD_DIM or spec.hidden_size % spec.num_attention_heads:
        raise ValueError(f"head dim {spec.hidden_size}/{spec.num_attention_heads} is below {MIN_HEAD_DIM}: vLLM "
                         "could not load the checkpoints")
    models = {fam: str(build_tiny(run_path(cfg, "models", fam), spec, seed=cfg.seed, family=fam)) for fam in FAMILIES}
    models["mauve-featurizer"] = mauve_featurizer_path(cfg)  # the metrics stage's own rule for its tiny encoder
    return models


def sample_table(table, per_language: int, seed: int, split: str):
    "At most `per_language` rows of each language of a corpus table, drawn with a seed, in their original order."
    import numpy as np
    from polyalign.core import derive_seed
    langs = np.asarray(table.column("language").to_pylist())
    keep = []
    for lang in sorted(set(langs)):
        rows = np.flatnonzero(langs == lang)
        rng = np.random.default_rng(derive_seed(seed, "gpu-smoke", split, lang))
        keep += rng.choice(rows, min(per_language, len(rows)), replace=False).tolist()
    return table.take(sorted(keep))


def build_data(cfg, out: Path, per_language: int) -> dict[str, int]:
    """`out/data/<split>.parquet`: a sample of each split of the tiny corpus, built from the bundled fixtures in a
    scratch run directory (the schema metadata is kept, so `polyalign.data.read_split` reads them)."""
    import pyarrow.parquet as pq
    from polyalign.core import SPLITS, run_path
    from polyalign.sources import build_corpus
    counts = {}
    with tempfile.TemporaryDirectory() as tmp:
        build_corpus(replace(cfg, run_dir=tmp))
        for split in SPLITS:
            table = sample_table(pq.read_table(Path(tmp, "data", f"{split}.parquet")), per_language, cfg.seed, split)
            dest = run_path(cfg, "data", f"{split}.parquet")
            dest.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(table, dest)
            counts[split] = table.num_rows
    return counts


def dir_size(path: Path) -> int:
    "Bytes of every file under `path`."
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def run_command(bundle: str) -> str:
    "The shell lines that run the smoke test on the GPU machine, from the repository root."
    return (f"python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site "
            f"{bundle}/wheels/*.whl && export PYTHONPATH=/tmp/site:.\n"
            f"python3 scripts/gpu_smoke.py --bundle {bundle} --out gpu-smoke-report.json")


def run_notes(bundle: str, size_mib: float, plan: WheelPlan) -> str:
    "RUN.md: how to run the smoke test with this bundle, and what the bundle could not carry."
    problems = "".join(f"- {p}\n" for p in plan.problems) or "- none\n"
    return (f"# GPU smoke test\n\nBundle size: {size_mib:.1f} MiB. From the repository root on the GPU machine:\n\n"
            f"```bash\n{run_command(bundle)}\n```\n\nThe report (JSON) holds each step's result, time, numbers and "
            "error text; the command exits with 1 when a step failed.\n\nInstalled there at a version that may not "
            f"meet a requirement, and not carried (binary):\n\n{problems}")


def check_out_dir(out: Path) -> None:
    "Refuse to rebuild into a folder that holds something other than an earlier bundle."
    if out.exists() and any(out.iterdir()) and not (out / "bundle.json").is_file():
        raise SystemExit(f"{out} exists and is not a smoke-test bundle; choose another --out")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="build/gpu-smoke", help="the bundle folder (rebuilt; wheels are kept)")
    ap.add_argument("--rows", type=int, default=64, help="rows per language of each split")
    ap.add_argument("--image-packages", help="a `pip freeze` of the GPU machine (default: the built-in image list)")
    args = ap.parse_args(argv)
    out = Path(args.out)
    check_out_dir(out)
    from polyalign.core import load_config, save_config
    for stale in ("models", "data"): shutil.rmtree(out / stale, ignore_errors=True)
    cfg = replace(load_config("tiny", CONFIG_OVERRIDES), run_dir=str(out))
    save_config(cfg, out / "config.yaml")
    models = build_models(cfg, out)
    rows = build_data(cfg, out, args.rows)
    freeze = Path(args.image_packages).read_text(encoding="utf-8") if args.image_packages else None
    requirements = root_requirements((ROOT / "settings.ini").read_text(encoding="utf-8"))
    image = image_packages(freeze)
    plan = plan_wheels(requirements, local_dists(), image)
    wheels = download_wheels(plan.carry, out / "wheels")
    summary = {"families": list(FAMILIES), "models": {k: str(Path(v).relative_to(out)) for k, v in models.items()},
               "rows": rows, "requirements": requirements,
               "wheels": {n: {"version": v, "why": plan.reasons[n]} for n, v in plan.carry.items()},
               "not_carried": plan.problems, "image_packages": sorted(image), "run": run_command(str(out))}
    (out / "bundle.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    size_mib = dir_size(out) / 2**20   # RUN.md adds a few hundred bytes after this
    (out / "RUN.md").write_text(run_notes(str(out), size_mib, plan), encoding="utf-8")
    print(f"bundle {out}: {size_mib:.1f} MiB ({len(models)} models, rows {rows}, {len(wheels)} wheels: "
          f"{', '.join(f'{n}=={v}' for n, v in sorted(plan.carry.items()))})")
    for p in plan.problems: print(f"  not carried: {p}")
    if size_mib > MAX_MIB:
        print(f"bundle is {size_mib:.1f} MiB, over the {MAX_MIB} MiB that may travel", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
