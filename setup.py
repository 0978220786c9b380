"""Install the `model` and `pipeline` packages, the shipped model, and the `yesno-label` command."""

from setuptools import setup

# Tested together on Python 3.11 (CPU): apache-beam 2.77.0, tensorflow-cpu 2.21.0 (Keras 3.15.1),
# numpy 2.4.6, pyarrow 25.0.1, protobuf 6.33.6, soundfile 0.14.0, soxr 1.1.0, onnx 1.23.2,
# onnxruntime 1.31.1.
# The caps are Beam 2.77's own (numpy < 2.5, pyarrow < 26, protobuf < 7).
INSTALL_REQUIRES = [
    "apache-beam>=2.77,<2.78",
    "tensorflow-cpu>=2.21,<2.22",
    "numpy>=1.26,<2.5",
    "pyarrow>=14,<26",
    "protobuf>=6.31.1,<7",
    "soundfile>=0.12",
    "soxr>=0.3",
    # The model is served from model.onnx by onnxruntime (model/serving.py); onnx writes it at
    # training time (model/export/onnx_export.py). onnx 1.23 needs protobuf >= 6.31.1.
    "onnx>=1.23,<1.24",
    "onnxruntime>=1.31,<1.32",
]

DASK = ["apache-beam[dask]>=2.77,<2.78"]  # tested with dask and distributed 2026.8.0
AWS = ["apache-beam[aws]>=2.77,<2.78"]
GCP = ["apache-beam[gcp]>=2.77,<2.78"]

setup(
    name="yesno-label",
    version="0.1.0",
    description="Batch yes/no keyword labelling of WAV recordings with Apache Beam and TensorFlow",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=["model", "model.training", "model.evaluation", "model.export", "pipeline"],
    package_data={
        "model": [
            "README.md",
            "artifacts/yesno/*",
            "artifacts/yesno/variables/*",
            "artifacts/yesno/verifier/*",
        ]
    },
    install_requires=INSTALL_REQUIRES,
    extras_require={
        "dask": DASK,
        "aws": AWS,
        "gcp": GCP,
        "plots": ["matplotlib>=3.8"],  # only for `python -m model.evaluation.evaluate --plots`
        "test": [
            *DASK,
            *AWS,
            *GCP,
            "pytest>=8",
            "pytest-xdist>=3.6",  # tested with 3.8.0: the suite in worker processes (pytest.ini)
            "hypothesis>=6",
            "ruff>=0.6",
            "moto[server]>=5",
            "gcp-storage-emulator>=2024.8",
            "websockets>=13",  # the DevTools protocol, to check the HTML report in chromium
        ],
    },
    entry_points={"console_scripts": ["yesno-label=pipeline.cli:main"]},
    license="Apache-2.0",
)
