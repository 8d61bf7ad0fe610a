"""Real Helm (the Go SDK through helm-python-sdk) for the e2e suite: lint, install, uninstall.

usage: helm.py lint CHART
       helm.py install CHART RELEASE NAMESPACE VALUES_JSON
       helm.py uninstall RELEASE NAMESPACE
KUBECONFIG selects the cluster.
"""
import json
import os
import sys

import helm_python as h


def main() -> int:
    cmd = sys.argv[1]
    if cmd == "lint":
        result = h.lint(sys.argv[2])
        problems = result.get("errors", []) + [
            m for m in result.get("messages", []) if m.get("severity", 0) > 1
        ]
        print(json.dumps(result))
        return 1 if problems else 0
    cfg_ns = sys.argv[4] if cmd == "install" else sys.argv[3]
    cfg = h.Config(kubeconfig_path=os.environ["KUBECONFIG"], namespace=cfg_ns)
    if cmd == "install":
        chart, release, namespace, values = sys.argv[2], sys.argv[3], sys.argv[4], json.loads(sys.argv[5])
        rel = cfg.install(chart, release, values, namespace=namespace, create_namespace=True,
                          wait="watcher", timeout=240)
        print(f"installed {release}: {getattr(rel, 'status', rel)}")
        return 0
    if cmd == "uninstall":
        try:
            cfg.uninstall(sys.argv[2], ignore_not_found=True, wait="watcher", timeout=120)
            print(f"uninstalled {sys.argv[2]}")
        except h.HelmError as e:  # not installed: nothing to do
            print(f"uninstall {sys.argv[2]}: {e}")
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
