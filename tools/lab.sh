#!/usr/bin/env bash
# JupyterLab on the book's chapters, as `make lab` starts it: tools/lab.sh PYTHON DIR [PORT]
# - the `memvir` kernel for new notebooks (each chapter names it too);
# - jupytext's contents manager (installed with jupytext) opens a paired .py as a notebook and saving writes both
#   files; `make setup` makes "Jupytext Notebook" the viewer a .py opens with (tools/jupyterlab-overrides.json);
# - no browser pop-up (headless machines) and localhost only: Jupyter prints the URL with its token to open;
# - nothing fetched from the internet (no news feed, no update check, no extension catalogue);
# - as root (containers, CI) Jupyter refuses to start without --allow-root.
# `exec`: the server keeps this process id, so whoever started it can stop it by that id.
set -euo pipefail
python=$1 dir=$2 port=${3:-8888}
root=()
[ "$(id -u)" != 0 ] || root=(--allow-root)
exec "$python" -m jupyterlab --no-browser --ip=127.0.0.1 --port="$port" --ServerApp.root_dir="$dir" "${root[@]}" \
  --MappingKernelManager.default_kernel_name=memvir --LabApp.news_url=None \
  --LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate --LabApp.extension_manager=readonly
