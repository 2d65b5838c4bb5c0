"""What a model registered through the API may set: an allowlist of llama-server tuning.

Config-file models are the operator's and may use any flag. A model registered
over HTTP could otherwise make llama-server write files (--log-file,
--slot-save-path), serve a folder or open ports (--path, --host, --port), load
code or other weights (--lora, --mmproj, --control-vector, GGML_BACKEND_PATH),
or fetch from the network (--hf-repo, --model-url). Only the flags below pass;
everything else is refused with the flag's name. Names and arities come from
llama.cpp's common/arg.cpp (the build scripts/bootstrap.sh installs).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass


def _words(*lines: str) -> list[str]:
    return " ".join(lines).split()


# flag -> True when it takes a value (the next argument, or --flag=value).
_VALUE_FLAGS = _words(
    # threads and batching
    "-t --threads -tb --threads-batch -b --batch-size -ub --ubatch-size --keep"
    " -n --predict --n-predict --threads-http -to --timeout --cache-reuse"
    " -ctxcp --ctx-checkpoints --swa-checkpoints -cram --cache-ram -dt --defrag-thold"
    " -sps --slot-prompt-similarity --sleep-idle-seconds --numa --prio --poll -lm --load-mode"
    # GPU offload and memory
    " -ngl --gpu-layers --n-gpu-layers -sm --split-mode -ts --tensor-split -mg --main-gpu"
    " -dev --device -ot --override-tensor -ncmoe --n-cpu-moe -fa --flash-attn"
    " -ctk --cache-type-k -ctv --cache-type-v"
    # sampling defaults
    " -s --seed --temp --temperature --top-k --top-p --min-p --typical --typical-p"
    " --top-nsigma --top-n-sigma --xtc-probability --xtc-threshold --repeat-last-n"
    " --repeat-penalty --presence-penalty --frequency-penalty --dry-multiplier --dry-base"
    " --dry-allowed-length --dry-penalty-last-n --dynatemp-range --dynatemp-exp"
    " --mirostat --mirostat-lr --mirostat-ent --samplers --sampler-seq --sampling-seq"
    # embeddings, rope, chat
    " --pooling --embd-normalize --rope-scaling --rope-scale --rope-freq-base"
    " --rope-freq-scale --yarn-orig-ctx --yarn-ext-factor --yarn-attn-factor"
    " --yarn-beta-slow --yarn-beta-fast --reasoning-format --reasoning-budget"
)
_SWITCHES = _words(
    "--embedding --embeddings --rerank --reranking --jinja --no-jinja"
    " -cb --cont-batching -nocb --no-cont-batching --context-shift --no-context-shift"
    " -kvo --kv-offload -nkvo --no-kv-offload -kvu --kv-unified -no-kvu --no-kv-unified"
    " --swa-full --repack -nr --no-repack --no-host -cmoe --cpu-moe --warmup --no-warmup"
    " --cache-prompt --no-cache-prompt --op-offload --no-op-offload --perf --no-perf"
    " -sp --special --ignore-eos --spm-infill"
)
ALLOWED_FLAGS: Mapping[str, bool] = {
    **dict.fromkeys(_SWITCHES, False),
    **dict.fromkeys(_VALUE_FLAGS, True),
}

# The llama.cpp environment variables of allowed flags (it also reads LLAMA_ARG_NO_*).
_ALLOWED_ARG_ENV = frozenset(
    _words(
        "THREADS BATCH UBATCH N_PREDICT THREADS_HTTP TIMEOUT CACHE_REUSE CTX_CHECKPOINTS"
        " CACHE_RAM DEFRAG_THOLD NUMA LOAD_MODE N_GPU_LAYERS SPLIT_MODE TENSOR_SPLIT MAIN_GPU"
        " DEVICE"
        " OVERRIDE_TENSOR N_CPU_MOE FLASH_ATTN CACHE_TYPE_K CACHE_TYPE_V TEMPERATURE TOP_K"
        " TOP_P MIN_P REPEAT_PENALTY PRESENCE_PENALTY FREQUENCY_PENALTY POOLING"
        " ROPE_SCALING_TYPE ROPE_SCALE ROPE_FREQ_BASE ROPE_FREQ_SCALE YARN_ORIG_CTX"
        " YARN_EXT_FACTOR YARN_ATTN_FACTOR YARN_BETA_SLOW YARN_BETA_FAST THINK THINK_BUDGET"
        " ALIAS EMBEDDINGS RERANKING JINJA CONT_BATCHING CONTEXT_SHIFT KV_OFFLOAD KV_UNIFIED"
        " SWA_FULL REPACK NO_HOST CPU_MOE CACHE_PROMPT PERF",
    )
)
_PLAIN_ENV = frozenset({"CUDA_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES", "OMP_NUM_THREADS"})
# ggml reads many GGML_* tuning switches; these load code, name files or talk to the network.
_GGML_REFUSED = re.compile(r"PATH|DIR|FILE|OUTPUT|CAPTURE|LLDB|RPC|RDMA|KERNEL|LOGGER")


@dataclass(frozen=True)
class Refused:
    """Why an API-registered model's setting is refused: the field and the message."""

    field: str
    message: str


def _flag_name(arg: str) -> str:
    return arg.split("=", 1)[0] if arg.startswith("--") else arg


def check_args(args: Sequence[str]) -> Refused | None:
    """The first argument an API-registered model may not pass to llama-server, or None."""
    i = 0
    while i < len(args):
        arg = args[i]
        flag = _flag_name(arg)
        takes_value = ALLOWED_FLAGS.get(flag)
        if takes_value is None:
            what = f"{flag} (args[{i}]) is" if arg.startswith("-") else f"args[{i}] {arg!r} is"
            return Refused(
                "args",
                f"{what} not allowed for a model registered through the API "
                "(only tuning flags are: threads, batch sizes, GPU layers, flash attention, "
                "cache types, sampling defaults, embeddings, jinja...). Flags that write "
                "files, open ports, load code or fetch models belong in the config file",
            )
        inline = "=" in arg and arg.startswith("--")
        if inline and not takes_value:
            return Refused("args", f"{flag} (args[{i}]) takes no value, got {arg!r}")
        if takes_value and not inline:
            if i + 1 >= len(args):
                return Refused("args", f"{flag} (args[{i}]) needs a value")
            i += 1
        i += 1
    return None


def check_env(env: Mapping[str, str]) -> Refused | None:
    """The first environment variable an API-registered model may not set, or None."""
    for name in sorted(env):
        if env_allowed(name):
            continue
        return Refused(
            "env",
            f"{name} is not allowed for a model registered through the API (allowed: "
            "CUDA_VISIBLE_DEVICES, HIP_VISIBLE_DEVICES, OMP_NUM_THREADS, GGML_* tuning, and "
            "LLAMA_ARG_* of allowed flags); set it in the config file instead",
        )
    return None


def env_allowed(name: str) -> bool:
    """True when an API-registered model may set this environment variable."""
    if name in _PLAIN_ENV:
        return True
    if name.startswith("GGML_"):
        return _GGML_REFUSED.search(name) is None
    if name.startswith("LLAMA_ARG_"):
        rest = name.removeprefix("LLAMA_ARG_")
        # LLAMA_ARG_NO_X switches X off; LLAMA_ARG_NO_HOST is itself a flag's variable.
        return rest in _ALLOWED_ARG_ENV or (
            rest.startswith("NO_") and rest.removeprefix("NO_") in _ALLOWED_ARG_ENV
        )
    return False


def check_model(args: Sequence[str], env: Mapping[str, str]) -> Refused | None:
    """check_args then check_env."""
    return check_args(args) or check_env(env)
