#!/usr/bin/env bash
# Builds the ingest benchmark corpus in target/bench-corpus: PDF and DOCX made by LibreOffice from
# the license texts every Debian system ships, and an XLSX of 5,000 rows.
set -euo pipefail
cd "$(dirname "$0")/.."
out=target/bench-corpus
mkdir -p "$out"
cd "$out"
cat /usr/share/common-licenses/GPL-3 /usr/share/common-licenses/Apache-2.0 /usr/share/common-licenses/MPL-2.0 > licenses.txt
python3 - <<'PY'
import random
random.seed(7)
cities = ["Oslo", "Lima", "Porto", "Kyoto", "Accra", "Quito", "Perth", "Turku"]
items = ["bolt", "gasket", "valve", "bearing", "pump", "filter", "sensor", "relay"]
with open("orders.csv", "w") as f:
    f.write("order,customer city,item,quantity,unit price,notes\n")
    for i in range(5000):
        f.write(f"{i},{random.choice(cities)},{random.choice(items)},{random.randint(1, 500)},{random.randint(1, 999)}.{random.randint(0, 99):02d},deliver before week {random.randint(1, 52)}\n")
PY
export HOME="$PWD"   # a private LibreOffice profile
soffice --headless --norestore --convert-to pdf licenses.txt >/dev/null 2>&1
soffice --headless --norestore --convert-to 'docx:MS Word 2007 XML' licenses.txt >/dev/null 2>&1
soffice --headless --norestore --convert-to xlsx orders.csv >/dev/null 2>&1
ls -l licenses.pdf licenses.docx orders.xlsx
