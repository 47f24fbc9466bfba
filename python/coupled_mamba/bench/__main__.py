"""python -m coupled_mamba.bench {scan,model,train} [options]"""
import sys


def main(argv=None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in ("scan", "model", "train"):
        print("usage: python -m coupled_mamba.bench {scan,model,train} [--help]", file=sys.stderr)
        raise SystemExit(2)
    which, rest = argv[0], argv[1:]
    if which == "scan":
        from .scan_bench import main as run
    elif which == "model":
        from .model_bench import main as run
    else:
        from .train_bench import main as run
    run(rest)


if __name__ == "__main__":
    main()
