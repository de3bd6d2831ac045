#!/usr/bin/env bash
# `make demo`: a local Git remote, real SSH hosts, a real `controller sync`,
# then a manual change on one host caught by `controller verify` and `controller check` and undone by
# `controller sync`, then a release rolled back and pinned, then unpinned, then a host whose health check fails
# by hand and recovers.
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
say "Starting 5 lab hosts: whole machines (copy-on-write root, own hostname), sshd on 127.0.1.1-5"
python -m lab up --dir "$WORK/lab" --hosts 5 --prefix 127.0.1
trap 'python -m lab down --dir "$WORK/lab"' EXIT

say "Generating a throwaway age key and encrypting the demo secrets with it"
age-keygen -o "$WORK/age.key" 2>/dev/null
recipient=$(age-keygen -y "$WORK/age.key")
content="$WORK/content"
mkdir -p "$content"
cp -r ansible.cfg gitops.yml .sops.yaml requirements.yml playbooks roles inventories "$content/"
sed -i "s/REPLACE_WITH_YOUR_AGE_RECIPIENT/$recipient/" "$content/.sops.yaml"

say "Publishing what the repository takes from elsewhere: a role's Git remote, a collection, a .deb"
python -c "import sys; from pathlib import Path; from lab.repository import publish_sources; \
publish_sources(Path(sys.argv[1]))" "$WORK/sources"
ls "$WORK/sources"
# the example names the bastion's mirror /var/lib/ops-sources; the demo's mirror is its own directory
sed -i "s|/var/lib/ops-sources|$WORK/sources|" "$content/requirements.yml"
for env in staging production; do
  echo "system_sources: $WORK/sources" > "$content/inventories/$env/group_vars/all/system.yml"
done
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

lab_ssh() {  # lab_ssh USER HOST COMMAND: real ssh into a lab host
  ssh -i "$WORK/lab/id_ed25519" -o UserKnownHostsFile="$WORK/lab/known_hosts" -p 2222 "$1@$2" "$3"
}

say "controller sync: converge every host to the branch head (as deploy, root through sudo)"
expect 0 controller sync --progress
echo "web1.staging, seen over ssh as deploy:"
lab_ssh deploy 127.0.1.1 "cat /etc/motd; dpkg-query -W shop-tools; id shop; cat /etc/cron.d/shop-tools" \
  | sed 's/^/  /'
echo "web1.staging's /srv/etc/motd is now:"
sed 's/^/  /' "$WORK/lab/hosts/h1/etc/motd"
echo "this machine has no shop-tools and no user shop: $(dpkg-query -W shop-tools 2>&1 | head -1); \
$(id shop 2>&1)"

say "A second sync has nothing to do: in sync, and the role's command ran at this revision (exit 0)"
expect 0 controller sync

say "controller verify: one ssh look per host against what the last full run left there"
expect 0 controller verify --app staging

say "Someone changes web1.staging by hand: a managed file, the package, /etc, a cron line"
lab_ssh root 127.0.1.1 "sed -i 's/^workers: .*/workers: 64/' /srv/opt/shop/conf/app.yml && \
  echo 'hotfix by hand' >> /srv/etc/motd && dpkg -r shop-tools >/dev/null && \
  sed -i 's/^workers = .*/workers = 1/' /etc/shop/shop.conf && sed -i 's|^\*/15 |0 |' /etc/cron.d/shop-tools"
echo "done: workers set to 64, a line added to the banner, shop-tools removed, /etc/shop and cron edited"

say "controller verify: the edited host differs from its manifest, so only it gets a full check (exit 2)"
expect 2 controller verify --app staging
expect 2 controller verify --app staging-system

say "controller check: a full check of every host of the app; the drift is reported (exit 2), nothing is changed"
expect 2 controller check --app staging

say "controller sync: the drift is corrected"
expect 0 controller sync --app staging
expect 0 controller sync --app staging-system
grep '^workers' "$WORK/lab/hosts/h1/opt/shop/conf/app.yml"
lab_ssh deploy 127.0.1.1 "dpkg-query -W shop-tools; grep ^workers /etc/shop/shop.conf; grep shop-tools /etc/cron.d/shop-tools" \
  | sed 's/^/  /' 

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

say "1.1.0 misbehaves in production: roll it back at once and pin it there until a fix is pushed"
expect 0 controller rollback production --reason "1.1.0 misbehaves"
echo "VERSION on web1.prod: $(cat "$WORK/lab/hosts/h3/opt/shop/VERSION")"
expect 0 controller status production
say "cron's next sync leaves production pinned (held, exit 5); unpin follows the branch again"
expect 5 controller sync --app production
expect 0 controller unpin production --reason "1.1.0 is fine after all"
expect 0 controller sync --app production
expect 0 controller history --audit

say "web2.prod goes into maintenance by hand: its health check fails (gitops.yml health:), nothing Ansible manages changed"
lab_ssh root 127.0.1.4 "echo 'disk swap, back at 14:00' > /srv/opt/shop/run/maintenance"
expect 4 controller verify --app production
expect 0 controller status --hosts production

say "Out of maintenance: the next verify finds it healthy again (health-recovered is announced once)"
lab_ssh root 127.0.1.4 "rm /srv/opt/shop/run/maintenance"
expect 0 controller verify --app production
