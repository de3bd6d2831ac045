#!/usr/bin/env bash
# `make demo`: a local Git remote, real SSH hosts, a real `controller sync`,
# then a manual change on one host caught by `controller check` and undone by `controller sync`.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV=${VENV:-$ROOT/.venv}
WORK=${DEMO_DIR:-$ROOT/.demo}
export PATH="$VENV/bin:$PATH"
cd "$ROOT"

say() { printf '\n\033[1m### %s\033[0m\n' "$*"; }
# expect CODE CMD...: show and run CMD; stop the demo if it does not exit with CODE
expect() {
  local want=$1; shift
  printf '$ %s\n' "$*"; set +e; "$@"; local code=$?; set -e
  printf '(exit %s)\n' "$code"
  if [ "$code" != "$want" ]; then echo "demo: expected exit $want from: $*" >&2; exit 1; fi
}

rm -rf "$WORK" && mkdir -p "$WORK"
say "Starting 5 lab hosts (one sshd each on 127.0.1.1-5, /srv isolated per host)"
python -m lab up --dir "$WORK/lab" --hosts 5 --prefix 127.0.1
trap 'python -m lab down --dir "$WORK/lab"' EXIT

say "Generating a throwaway age key and encrypting the demo secrets with it"
age-keygen -o "$WORK/age.key" 2>/dev/null
recipient=$(age-keygen -y "$WORK/age.key")
content="$WORK/content"
mkdir -p "$content"
cp -r ansible.cfg gitops.yml .sops.yaml playbooks roles inventories "$content/"
sed -i "s/REPLACE_WITH_YOUR_AGE_RECIPIENT/$recipient/" "$content/.sops.yaml"
for env in staging production; do
  target="inventories/$env/group_vars/all/secrets.sops.yml"
  sops --config "$content/.sops.yaml" encrypt --filename-override "$target" \
    "demo/secrets/$env.yml" > "$content/$target"
  echo "encrypted $target"
done

say "Publishing the example repository to a local bare Git remote"
git init -q --bare -b main "$WORK/remote.git"
git -C "$content" init -q -b main
git -C "$content" add -A
git -C "$content" -c user.name=demo -c user.email=demo@example.invalid commit -q -m "Example fleet"
git -C "$content" push -q "$WORK/remote.git" main
git -C "$content" log --oneline

cat > "$WORK/controller.yml" <<YAML
source: {url: remote.git, branch: main}
state_dir: state
sops: {age_key_file: age.key}
ssh: {private_key_file: lab/id_ed25519, known_hosts_file: lab/known_hosts}
YAML
export CONTROLLER_CONFIG="$WORK/controller.yml"
echo "wrote $CONTROLLER_CONFIG:"; sed 's/^/  /' "$CONTROLLER_CONFIG"

say "controller sync: converge every host to the branch head"
expect 0 controller sync --progress
echo "web1.staging's /srv/etc/motd is now:"
sed 's/^/  /' "$WORK/lab/hosts/h1/etc/motd"

say "A second sync has nothing to do"
expect 0 controller sync

say "Someone edits a managed file by hand on web1.staging"
ssh -i "$WORK/lab/id_ed25519" -o UserKnownHostsFile="$WORK/lab/known_hosts" -p 2222 root@127.0.1.1 \
  "sed -i 's/^workers: .*/workers: 64/' /srv/opt/shop/conf/app.yml && echo 'hotfix by hand' >> /srv/etc/motd"
echo "done: workers set to 64, a line added to the banner"

say "controller check: the drift is reported (exit 2), nothing is changed"
expect 2 controller check --app staging

say "controller sync: the drift is corrected"
expect 0 controller sync --app staging
grep '^workers' "$WORK/lab/hosts/h1/opt/shop/conf/app.yml"

say "A pull request merged: bump the application version and push"
sed -i 's/^app_version: .*/app_version: "1.1.0"/' "$content/roles/app/defaults/main.yml"
git -C "$content" -c user.name=demo -c user.email=demo@example.invalid commit -qam "Release shop 1.1.0"
git -C "$content" push -q "$WORK/remote.git" main
expect 0 controller sync
echo "VERSION on every web host:"
for h in 1 2 3 4 5; do printf '  h%s: %s\n' "$h" "$(cat "$WORK/lab/hosts/h$h/opt/shop/VERSION")"; done

say "controller history and status"
expect 0 controller history
expect 0 controller status
