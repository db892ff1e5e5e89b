"""`make bench`: run every bench_*.py beside this file; each writes its own <name>.md table here."""
import importlib.util
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(names: list[str]) -> int:
    scripts = sorted(HERE.glob("bench_*.py"))
    if names: scripts = [s for s in scripts if s.stem.removeprefix("bench_") in names]
    for s in scripts:
        t0 = time.perf_counter()
        spec = importlib.util.spec_from_file_location(s.stem, s)
        mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
        out = mod.main()
        print(f"{s.name}: wrote {out} in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
