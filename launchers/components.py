"""torchx components: training, evaluation and the scaling benchmark.

Each function returns a ``torchx.specs.AppDef`` built on ``torchx.components.dist.ddp``
(one role, ``nnodes x nproc_per_node`` replicas under torchrun's rendezvous), so the same
component runs here and on any torchx scheduler::

    # this machine (CPU, gloo): 2 ranks from the working directory
    torchx run --scheduler local_cwd launchers/components.py:train \\
        --nproc_per_node 2 --config configs/synthetic.yaml -- train.epochs=1

    # a Kubernetes cluster (Volcano; CUDA, nccl): 8 hosts x 8 GPUs, the image of
    # launchers/Dockerfile, checkpoints on a shared volume (a PersistentVolumeClaim)
    torchx run --workspace "" --scheduler kubernetes -cfg queue=default,namespace=recsys \\
        launchers/components.py:train --nnodes 8 --nproc_per_node 8 --gpu 8 --cpu 64 \\
        --memMB 480000 --image registry.example.com/interformer-rec:latest \\
        --mounts type=volume,src=ckpt-pvc,dst=/mnt/ckpt \\
        --max_retries 3 --config configs/synthetic.yaml -- train.out_dir=/mnt/ckpt/run1

    # Slurm: the same flags, with --scheduler slurm -cfg partition=gpu,time=12:00:00
    # (no --image: slurm runs from the current directory's environment)

Positional arguments after ``--`` are config overrides (``dotted.key=value``). Training
sets ``train.resume=true`` unless ``--resume False``: a job that a scheduler retries
(``--max_retries``) or that is launched again continues from its latest complete
checkpoint under ``train.out_dir`` (which must then be on shared storage or an object
store, ``s3://...``), on any world
size; the first launch starts fresh.
"""

from typing import Dict, List, Optional

import torchx.specs as specs
from torchx.components import dist

# the image launchers/Dockerfile builds (docker build -f launchers/Dockerfile -t interformer-rec:latest .);
# on a cluster, pass the registry path you pushed it to; local_cwd ignores it
DEFAULT_IMAGE = "interformer-rec:latest"


def _sets(overrides: tuple) -> List[str]:
    out: List[str] = []
    for o in overrides:
        if "=" not in o:
            raise ValueError(f"config override {o!r}: expected dotted.key=value")
        out += ["--set", o]
    return out


def _ddp(
    args: List[str],
    *,
    m: Optional[str] = None,
    script: Optional[str] = None,
    name: str,
    nnodes: int,
    nproc_per_node: int,
    image: str,
    h: Optional[str],
    cpu: int,
    gpu: int,
    memMB: int,
    max_retries: int,
    rdzv_port: int,
    env: Optional[Dict[str, str]],
    mounts: Optional[List[str]],
) -> specs.AppDef:
    return dist.ddp(
        *args,
        m=m,
        script=script,
        image=image,
        name=name,
        h=h,
        cpu=cpu,
        gpu=gpu,
        memMB=memMB,
        j=f"{nnodes}x{nproc_per_node}",
        env={"PYTHONUNBUFFERED": "1", **(env or {})},
        max_retries=max_retries,
        rdzv_port=rdzv_port,
        mounts=mounts,
    )


def train(
    *overrides: str,
    config: str = "configs/synthetic.yaml",
    nnodes: int = 1,
    nproc_per_node: int = 1,
    resume: bool = True,
    name: str = "interformer-train",
    image: str = DEFAULT_IMAGE,
    h: Optional[str] = None,
    cpu: int = 2,
    gpu: int = 0,
    memMB: int = 8192,
    max_retries: int = 0,
    rdzv_port: int = 29500,
    env: Optional[Dict[str, str]] = None,
    mounts: Optional[List[str]] = None,
) -> specs.AppDef:
    """Sharded training: ``python -m interformer_rec.cli train`` on every rank.

    Args:
        overrides: config overrides, ``dotted.key=value`` (e.g. ``train.epochs=1``)
        config: YAML config (see configs/)
        nnodes: number of hosts
        nproc_per_node: ranks per host (GPUs per host on CUDA)
        resume: continue from the latest complete checkpoint under train.out_dir, if any
        name: job name
        image: container image holding this package (ignored by local_cwd)
        h: a registered named resource (overrides cpu, gpu, memMB)
        cpu: CPUs per host
        gpu: GPUs per host
        memMB: memory per host in MB
        max_retries: scheduler retries of a failed job (each resumes from its checkpoint)
        rdzv_port: rendezvous port on the first host (multi-host jobs)
        env: extra environment variables
        mounts: mounts, e.g. type=bind,src=/data,dst=/data
    """
    args = ["train", "--config", config, *_sets(overrides)]
    if resume:
        args += ["--set", "train.resume=true"]
    return _ddp(
        args, m="interformer_rec.cli", name=name, nnodes=nnodes, nproc_per_node=nproc_per_node,
        image=image, h=h, cpu=cpu, gpu=gpu, memMB=memMB, max_retries=max_retries,
        rdzv_port=rdzv_port, env=env, mounts=mounts,
    )


def evaluate(
    *overrides: str,
    config: str = "configs/synthetic.yaml",
    checkpoint: Optional[str] = None,
    split: str = "test",
    nnodes: int = 1,
    nproc_per_node: int = 1,
    name: str = "interformer-evaluate",
    image: str = DEFAULT_IMAGE,
    h: Optional[str] = None,
    cpu: int = 2,
    gpu: int = 0,
    memMB: int = 8192,
    env: Optional[Dict[str, str]] = None,
    mounts: Optional[List[str]] = None,
) -> specs.AppDef:
    """Evaluate a checkpoint (written on any world size) on ``split``.

    Args:
        overrides: config overrides, ``dotted.key=value``
        config: YAML config (see configs/)
        checkpoint: checkpoint dir, or a checkpoints/run dir whose ``best`` is used (default: train.out_dir's)
        split: train, valid or test
        nnodes: number of hosts
        nproc_per_node: ranks per host
        name: job name
        image: container image holding this package (ignored by local_cwd)
        h: a registered named resource (overrides cpu, gpu, memMB)
        cpu: CPUs per host
        gpu: GPUs per host
        memMB: memory per host in MB
        env: extra environment variables
        mounts: mounts, e.g. type=bind,src=/data,dst=/data
    """
    args = ["--config", config, "--split", split, *_sets(overrides)]
    if checkpoint:
        args += ["--checkpoint", checkpoint]
    return _ddp(
        args, m="interformer_rec.train.evaluate", name=name, nnodes=nnodes,
        nproc_per_node=nproc_per_node, image=image, h=h, cpu=cpu, gpu=gpu, memMB=memMB,
        max_retries=0, rdzv_port=29500, env=env, mounts=mounts,
    )


def benchmark(
    *overrides: str,
    config: str = "configs/synthetic.yaml",
    model: str = "interformer",
    batch_size: int = 256,
    steps: int = 30,
    warmup: int = 5,
    profile_steps: int = 10,
    threads: int = 1,
    result: str = "scaling_result.json",
    nnodes: int = 1,
    nproc_per_node: int = 2,
    name: str = "interformer-benchmark",
    image: str = DEFAULT_IMAGE,
    h: Optional[str] = None,
    cpu: int = 2,
    gpu: int = 0,
    memMB: int = 8192,
    env: Optional[Dict[str, str]] = None,
    mounts: Optional[List[str]] = None,
) -> specs.AppDef:
    """One world size of benchmarks/scaling.py: samples/s per rank and communication
    share of sharded training (run it at several sizes to get the scaling curve).

    Args:
        overrides: config overrides, ``dotted.key=value``
        config: YAML config (its data must exist)
        model: model.name
        batch_size: rows per rank per step
        steps: timed steps
        warmup: untimed steps first
        profile_steps: profiled steps (communication share)
        threads: intra-op threads per rank
        result: JSON written by rank 0
        nnodes: number of hosts
        nproc_per_node: ranks per host
        name: job name
        image: container image holding this package (ignored by local_cwd)
        h: a registered named resource (overrides cpu, gpu, memMB)
        cpu: CPUs per host
        gpu: GPUs per host
        memMB: memory per host in MB
        env: extra environment variables
        mounts: mounts, e.g. type=bind,src=/data,dst=/data
    """
    args = [
        "--worker", "--config", config, "--model", model, "--batch-size", str(batch_size),
        "--steps", str(steps), "--warmup", str(warmup), "--profile-steps", str(profile_steps),
        "--threads", str(threads), "--result", result, *_sets(overrides),
    ]
    return _ddp(
        args, script="benchmarks/scaling.py", name=name, nnodes=nnodes,
        nproc_per_node=nproc_per_node, image=image, h=h, cpu=cpu, gpu=gpu, memMB=memMB,
        max_retries=0, rdzv_port=29500, env={"OMP_NUM_THREADS": str(threads), **(env or {})},
        mounts=mounts,
    )
