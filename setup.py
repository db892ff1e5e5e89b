"""Packaging metadata, read from settings.ini so nbdev and pip agree on one source.

The wheel also carries the profiles, the stage notebooks and the reported tables under `polyalign/assets/`, so that
`pip install polyalign` then `polyalign reproduce --profile tiny` works outside a source checkout (see
`polyalign.core.asset_path`)."""
import shutil
from configparser import ConfigParser
from pathlib import Path

import setuptools
from setuptools.command.build_py import build_py

cfg = ConfigParser(delimiters=["="])
cfg.read("settings.ini", encoding="utf-8")
cfg = cfg["DEFAULT"]

# asset kind -> (source folder in the checkout, file patterns)
ASSETS = {"configs": ("papers/polyalign/configs", ("*.yaml", "*.json")),
          "reported": ("papers/polyalign/reported", ("*.csv", "*.md", "*.txt")),
          "nbs": ("nbs", ("*.ipynb",))}


class BuildWithAssets(build_py):
    "build_py, plus a copy of the shipped assets into polyalign/assets/ of the build."

    def run(self):
        super().run()
        for kind, (src, patterns) in ASSETS.items():
            dst = Path(self.build_lib) / "polyalign" / "assets" / kind
            dst.mkdir(parents=True, exist_ok=True)
            for pattern in patterns:
                for f in sorted(Path(src).glob(pattern)): shutil.copy2(f, dst / f.name)
        # the deviations register, which the report renders (`report.deviations_path`)
        shutil.copy2("papers/polyalign/deviations.md", Path(self.build_lib) / "polyalign" / "assets" / "deviations.md")


def reqs(key):
    return cfg.get(key, "").split()


setuptools.setup(
    name=cfg["lib_name"],
    version=cfg["version"],
    description=cfg["description"],
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    author=cfg["author"],
    author_email=cfg["author_email"],
    license="Apache-2.0",
    url=cfg["git_url"],
    python_requires=f">={cfg['min_python']}",
    packages=setuptools.find_packages(include=["polyalign", "polyalign.*"]),
    package_data={"polyalign": ["fixtures/**/*"]},
    include_package_data=True,
    cmdclass={"build_py": BuildWithAssets},
    install_requires=reqs("requirements"),
    extras_require={"dev": reqs("dev_requirements"), "gpu": reqs("gpu_requirements")},
    entry_points={
        "console_scripts": cfg.get("console_scripts", "").split(),
        "nbdev": [f"{cfg['lib_path']}={cfg['lib_path']}._modidx:d"],
        "papermill.engine": ["polyalign=polyalign.reproduce:StageEngine"],
    },
    zip_safe=False,
)
