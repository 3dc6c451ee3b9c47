"""Turn a pytest-benchmark JSON of benchmarks/test_kernels.py into the README's table.

    python benchmarks/report.py out.json

Prints, per group, each implementation's median and min-max, its ratio to PyTorch, and the
targets of issue 2: chosen (auto) backend <= PyTorch; fused dropout+residual+layernorm >= 2x
faster than PyTorch's three ops; clip+Adam within 1.3x of the copy-bandwidth bound.
"""
import json
import sys
from collections import defaultdict

from fastcpu import kernels

# DRAM bytes per element: a copy reads 4, write-allocates 4 and writes back 4 (12); clip+Adam
# reads g for the norm (4), then reads p, g, m, v (16) and writes back p, m, v (12): 32.
COPY_BYTES, ADAM_BYTES = 12, 32


def main(path):
    data = json.load(open(path))
    groups = defaultdict(dict)
    for b in data["benchmarks"]:
        impl = b["param"].split("-")[0] if b.get("param") else b["name"]
        groups[b["group"]][impl] = b["stats"]
    print(f"machine: {data['machine_info'].get('cpu', {}).get('brand_raw', '?')}, "
          f"{data['datetime']}")
    print("| kernel (fwd+bwd) | backend | median ms | min–max ms | vs PyTorch |")
    print("|---|---|---|---|---|")
    verdicts = []
    for g, impls in sorted(groups.items()):
        torch_med = impls.get("torch", {}).get("median")
        for impl, st in sorted(impls.items(), key=lambda kv: kv[1]["median"]):
            ratio = f"{st['median'] / torch_med:.2f}x" if torch_med else ""
            print(f"| {g} | {impl} | {st['median'] * 1e3:.2f} | {st['min'] * 1e3:.2f}–"
                  f"{st['max'] * 1e3:.2f} | {ratio} |")
        op = {"attention": "attention", "conv1d": "conv1d", "layernorm": "layernorm",
              "dropout(0.2)+residual+layernorm": "layernorm", "ffn": "ffn",
              "clip+Adam": "adam"}.get(next((k for k in ("dropout(0.2)+residual+layernorm",
                                                          "attention", "conv1d", "layernorm",
                                                          "ffn", "clip+Adam")
                                             if g.startswith(k)), ""))
        if not op or not torch_med:
            continue
        auto = kernels.get(op).backend
        if auto in impls:
            ratio = impls[auto]["median"] / torch_med
            need = 0.5 if g.startswith("dropout") else 1.0
            verdicts.append(f"{g}: auto={auto} {ratio:.2f}x PyTorch (target <= {need}x) "
                            f"{'OK' if ratio <= need else 'MISSED'}")
        if op == "adam" and "test_copy_bandwidth" in impls:
            t_copy = impls["test_copy_bandwidth"]["median"]
            bound = t_copy * ADAM_BYTES / COPY_BYTES
            r = impls[auto]["median"] / bound
            verdicts.append(f"clip+Adam bandwidth: copy {t_copy * 1e3:.2f} ms -> bound "
                            f"{bound * 1e3:.2f} ms; auto={auto} at {r:.2f}x the bound "
                            f"(target <= 1.3x) {'OK' if r <= 1.3 else 'MISSED'}")
    print()
    for v in verdicts:
        print("-", v)


if __name__ == "__main__":
    main(sys.argv[1])
