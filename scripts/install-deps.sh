#!/usr/bin/env bash
# System packages the tests need: LibreOffice (builds the DOCX/PDF/XLSX test corpus) and
# shared-mime-info (ships a real PDF used as a test document), redis-server (cluster-mode tests
# run real Redis processes), openssl (certificates for the Redis TLS test), prometheus (promtool
# checks the PromQL of the dashboards and alert rules we ship), kubectl (the e2e suite drives its
# cluster with it; Debian's kubernetes-client where the machine has none). Idempotent.
set -euo pipefail
need=()
command -v soffice >/dev/null 2>&1 || need+=(libreoffice-writer-nogui libreoffice-calc-nogui)
[ -f /usr/share/doc/shared-mime-info/shared-mime-info-spec.pdf ] || need+=(shared-mime-info)
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
command -v kubectl >/dev/null 2>&1 || need+=(kubernetes-client)
if [ ${#need[@]} -gt 0 ]; then
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
