"""One rank per GPU (issue "GPU-scale performance", item 5): the device a rank drives, bound or
unbound, refused when a node has more ranks than GPUs; the GPU requests of a GPU cluster profile.
No GPU needed: the visible device counts are passed explicitly."""
import os
import subprocess
import sys
import types

import pytest
import torch

from cloudsr_hpc.config import build
from cloudsr_hpc.core import devices as dv
from cloudsr_hpc.errors import ConfigError
from cloudsr_hpc.orchestration import executors as ex
from cloudsr_hpc.schema import ClusterProfile
from tests.conftest import ROOT

# srun step of 4 tasks on this node, 4 GPUs for the step (what Slurm exports)
STEP = {"SLURM_STEP_ID": "0", "SLURM_NODEID": "0", "SLURM_STEP_TASKS_PER_NODE": "4",
        "SLURM_GPUS_ON_NODE": "4"}


@pytest.mark.parametrize("local_rank", [0, 1, 2, 3])
def test_bound_tasks_each_see_one_gpu_and_drive_index_0(local_rank):
    # --gpus-per-task=1 / --gpu-bind=single:1|closest|map_gpu: CUDA_VISIBLE_DEVICES is the task's own GPU
    env = dict(STEP, CUDA_VISIBLE_DEVICES=str(3 - local_rank))
    assert dv.rank_device_index(local_rank, 1, env) == 0
    # two GPUs bound to each of 2 tasks: still the first of its own
    env = dict(STEP, SLURM_STEP_TASKS_PER_NODE="2", CUDA_VISIBLE_DEVICES="2,3")
    assert dv.rank_device_index(min(local_rank, 1), 2, env) == 0


@pytest.mark.parametrize("env", [
    dict(STEP, CUDA_VISIBLE_DEVICES="0,1,2,3"),                     # srun --gpus-per-node=4, no binding
    {"LOCAL_WORLD_SIZE": "4", "LOCAL_RANK": "0"},                     # torchrun on a 4-GPU machine
    {"OMPI_COMM_WORLD_LOCAL_SIZE": "4"},                              # mpiexec (Open MPI)
    {"MPI_LOCALNRANKS": "4", "CUDA_VISIBLE_DEVICES": "4,5,6,7"},       # mpiexec (MPICH/Hydra), a subset
])
def test_unbound_ranks_see_all_gpus_and_drive_their_local_rank(env):
    assert [dv.rank_device_index(r, 4, env) for r in range(4)] == [0, 1, 2, 3]


@pytest.mark.parametrize("env,visible,local_rank,counts", [
    ({"LOCAL_WORLD_SIZE": "8"}, 4, 5, ("8 ranks", "4 GPU")),                      # torchrun --nproc 8, 4 GPUs
    (dict(STEP, SLURM_STEP_TASKS_PER_NODE="8", CUDA_VISIBLE_DEVICES="0,1,2,3"), 4, 0, ("8 ranks", "4 GPU")),
    (dict(STEP, SLURM_GPUS_ON_NODE="1", CUDA_VISIBLE_DEVICES="0"), 1, 2, ("4 ranks", "1 GPU")),  # 1 GPU
    ({"OMPI_COMM_WORLD_LOCAL_SIZE": "2"}, 1, 0, ("2 ranks", "1 GPU")),          # mpiexec -n 2, 1-GPU machine
    ({"LOCAL_WORLD_SIZE": "2", "SLURM_GPUS_ON_NODE": "gpu:a100:1"}, 1, 1, ("2 ranks", "1 GPU")),
])
def test_more_ranks_than_gpus_on_a_node_is_refused_naming_the_counts(env, visible, local_rank, counts):
    with pytest.raises(ConfigError) as e:
        dv.rank_device_index(local_rank, visible, env)
    for needle in (*counts, dv.OVERSUBSCRIBE_VAR, "--ntasks-per-node"):
        assert needle in str(e.value), (needle, str(e.value))
    # on purpose: allowed, unbound ranks wrap round the visible GPUs, bound ones keep their own
    assert dv.rank_device_index(local_rank, visible, dict(env, **{dv.OVERSUBSCRIBE_VAR: "1"})) \
        == local_rank % visible


def test_cpu_only_and_single_processes_keep_todays_behaviour():
    crowded = {"LOCAL_WORLD_SIZE": "64", "SLURM_GPUS_ON_NODE": "1"}
    assert dv.rank_device_index(7, 0, crowded) is None          # no GPU: the CPU, whatever the ranks
    assert dv.device_index(7, 64, 0) is None
    assert dv.rank_device_index(None, 4, crowded) == 0          # a process alone: the first GPU
    assert dv.rank_device_index(0, 1, {}) == 0                  # one process, one GPU
    # a launcher/wrapper that chose this rank's GPU (CUDA_VISIBLE_DEVICES=<one>) outside Slurm: bound
    assert dv.rank_device_index(3, 1, {"OMPI_COMM_WORLD_LOCAL_SIZE": "4", "CUDA_VISIBLE_DEVICES": "3"}) == 0


def test_the_ranks_on_this_node_come_from_the_launcher():
    assert dv.local_size({"LOCAL_WORLD_SIZE": "3", "SLURM_STEP_ID": "0",
                          "SLURM_STEP_TASKS_PER_NODE": "8"}) == 3
    step = {"SLURM_STEP_ID": "1", "SLURM_STEP_TASKS_PER_NODE": "2(x3),1", "SLURM_NTASKS_PER_NODE": "9"}
    assert [dv.local_size(dict(step, SLURM_NODEID=str(n))) for n in range(4)] == [2, 2, 2, 1]
    assert dv.local_size({"SLURM_STEP_ID": "0", "SLURM_NTASKS_PER_NODE": "6"}) == 6
    # the batch shell is one process, whatever the job's tasks per node; nothing said: unknown
    assert dv.local_size({"SLURM_NTASKS_PER_NODE": "4", "SLURM_STEP_TASKS_PER_NODE": "4"}) is None
    assert dv.local_size({}) is None
    assert dv.node_gpus(2, {}) == 2 and dv.node_gpus(1, {"CUDA_VISIBLE_DEVICES": "5"}) is None
    assert dv.node_gpus(1, {"SLURM_GPUS_ON_NODE": "4", "CUDA_VISIBLE_DEVICES": "0"}) == 4


def test_inference_and_training_pick_their_gpu_by_it(monkeypatch):
    from cloudsr_hpc.inference.runner import pick_device
    from cloudsr_hpc.training import distributed
    for var in ("CUDA_VISIBLE_DEVICES", "SLURM_GPUS_ON_NODE", "SLURM_STEP_ID", "OMPI_COMM_WORLD_LOCAL_SIZE",
                "OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "MPI_LOCALNRANKS", dv.OVERSUBSCRIBE_VAR):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert pick_device(3) == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert pick_device(3) == torch.device("cuda", 3) and pick_device(None) == torch.device("cuda", 0)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "6")
    with pytest.raises(ConfigError, match="6 ranks on this node but 4 GPU"):
        pick_device(5)  # was cuda:1, shared with rank 1
    # training: the process group is up (world 8, 2 nodes of 4 ranks); the rank's device is set
    chosen = []
    monkeypatch.setitem(sys.modules, "deepspeed", types.SimpleNamespace())
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_rank", lambda: 6)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda: 8)
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: chosen[-1])
    monkeypatch.setenv("RANK", "6")
    monkeypatch.setenv("LOCAL_RANK", "2")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    info = distributed.init_distributed()
    assert chosen == [2] and info.device == torch.device("cuda", 2) and info.local_rank == 2
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    with pytest.raises(ConfigError, match="8 ranks on this node but 4 GPU"):
        distributed.init_distributed()


# ------------------------------------------------------------------------------------- submission
def test_a_gpu_profile_asks_slurm_for_a_rank_per_gpu_bound_with_cpus_for_its_workers():
    gpu = ex.load_profile("example-gpu")
    for kind in ("train", "infer"):
        args = ex.sbatch_args(ex.load_job(kind), gpu)
        assert {"--gpus-per-node=4", "--ntasks-per-node=4", "--gpu-bind=single:1", "--cpus-per-task=8",
                "--partition=gpu"} <= set(args), (kind, args)
    infer = ex.load_job("infer")
    assert "--ntasks-per-node=4" in ex.sbatch_args(infer, gpu, ntasks=8, nodes=2)
    with pytest.raises(ConfigError, match="8 ranks per node but 4 GPUs per node"):
        ex.sbatch_args(infer, gpu, ntasks=8)
    # --gpus-per-task instead: Slurm gives (and binds) each task its own GPUs
    per_task = ClusterProfile(gpus_per_node=4, gpus_per_task=2, cpus_per_task=16)
    args = ex.sbatch_args(ex.load_job("train"), per_task)
    assert {"--gpus-per-task=2", "--ntasks-per-node=2", "--cpus-per-task=16"} <= set(args), args
    assert not any(a.startswith("--gpus-per-node") for a in args)
    # a campaign worker: one task, one GPU
    camp = ex.sbatch_args(ex.load_job("campaign"), gpu, gpus_per_node=1)
    assert {"--gpus-per-node=1", "--ntasks-per-node=1"} <= set(camp), camp


def test_cpu_profiles_ask_for_no_gpus_as_before():
    local = ex.load_profile("localslurm")
    assert local.gpu_bind == "" and local.gpus_per_task == 0 and local.env == {}
    assert ex.sbatch_args(ex.load_job("infer"), local) == [
        "--parsable", "--nodes=1", "--cpus-per-task=1", "--time=00:30:00", "--ntasks-per-node=2", "--mem=8G",
        "--requeue", "--signal=USR1@60", "--partition=debug"]
    assert ex.setup_env(local) is None and ex.setup_env(ex.load_profile("local")) is None


def test_the_profiles_env_is_exported_in_the_job_after_its_setup_lines():
    gpu = ex.load_profile("example-gpu")
    assert gpu.env["NCCL_DEBUG"] == "WARN" and gpu.env["TORCH_NCCL_ASYNC_ERROR_HANDLING"] == "1"
    prof = ClusterProfile(setup=["export NCCL_DEBUG=INFO"],
                          env={"NCCL_DEBUG": "WARN", "NCCL_IB_HCA": "mlx5_0,mlx5_1", "ODD": "a b;$(false)"})
    env = ex.setup_env(prof)
    out = subprocess.run(["bash", "-c", 'eval "$CLOUDSR_SETUP" && echo "$NCCL_DEBUG|$NCCL_IB_HCA|$ODD"'],
                         env=env, capture_output=True, text=True, timeout=30)
    assert out.stdout.strip() == "WARN|mlx5_0,mlx5_1|a b;$(false)", out  # the profile wins, quoted as is
    assert ex.setup_lines(prof)[0] == "export NCCL_DEBUG=INFO"


@pytest.mark.parametrize("change,needle", [
    ({"gpu_bind": "singel:1"}, "gpu_bind"),
    ({"gpus_per_node": 4, "gpus_per_task": 3}, "gpus_per_task"),
    ({"env": {"NCCL-DEBUG": "WARN"}}, "env"),
    ({"gpus_per_task": -1}, "gpus_per_task"),
])
def test_a_bad_gpu_profile_is_refused_naming_the_key(change, needle):
    with pytest.raises(ConfigError, match=needle):
        build(ClusterProfile, change, "site.yaml: ")
    assert build(ClusterProfile, {"gpu_bind": "map_gpu:0,1,2,3", "env": {"NCCL_IB_DISABLE": 1}}, "ok.yaml: ")


def test_env_sh_gives_each_rank_the_tasks_cpus():
    base = {k: v for k, v in os.environ.items() if k not in ("CLOUDSR_ROOT", "OMP_NUM_THREADS",
                                                            "SRUN_CPUS_PER_TASK", "CLOUDSR_SETUP")}
    show = 'source slurm/env.sh >/dev/null && echo "$OMP_NUM_THREADS ${SRUN_CPUS_PER_TASK:-unset}"'
    run = lambda **e: subprocess.run(  # noqa: E731
        ["bash", "-c", show],
        cwd=ROOT, env=dict(base, PYTHON=sys.executable, **e), capture_output=True, text=True, timeout=30)
    assert run(SLURM_CPUS_PER_TASK="8").stdout.split() == ["8", "8"]
    assert run().stdout.split() == ["1", "unset"]
