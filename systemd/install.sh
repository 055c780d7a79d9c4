#!/usr/bin/env bash
# Install or upgrade Outpost on Raspberry Pi OS (arm64 or armhf) from a clone of the
# repository:
#
#   sudo systemd/install.sh [--root DIR] [--example]
#
# What it does, in order (docs/install.md has the details):
#   1. checks Node (20 or newer) and npm;
#   2. builds the clone (npm ci when its node_modules do not match package-lock.json,
#      then npm run build:ship: the shipped code, not the tests), as the clone's owner;
#   3. creates the system users `outpost` (in dialout) and `outpost-node-red` (Node-RED's own),
#      /etc/outpost, /var/lib/outpost, /var/lib/outpost-node-red (moving an older Node-RED user
#      directory out of /var/lib/outpost) and the Node-RED channel's credential;
#   4. with no /etc/outpost/site.json yet, leaves it to the first-run setup page the service
#      serves (or, with --example, installs config/example.json there with a random
#      api.token and stops short of enabling: edit it, run again);
#   5. validates /etc/outpost/site.json, when there is one, with check-config; an invalid one
#      stops the installer here, before anything is installed or restarted (exit 78);
#   6. packs the package (npm pack: package.json "files"), installs it with
#      `npm ci --omit=dev --omit=optional` into a staging directory, checks that it runs, stops the
#      service, swaps the directory in as /opt/outpost, and installs /usr/local/bin/outpost,
#      the systemd units and the udev rule;
#   7. enables and (re)starts outpost.service (without a site.json: its setup page, on port
#      8080), and outpost-node-red.service when site.json enables Node-RED.
#
# Re-running it upgrades: the code, the unit and the udev rule are replaced; /etc/outpost
# and /var/lib/outpost are never touched (beyond creating them). With --root DIR every
# path is under DIR (for tests and image builds) and nothing is started or reloaded.
set -euo pipefail
umask 022

PREFIX=/opt/outpost
CONF_DIR=/etc/outpost
STATE_DIR=/var/lib/outpost
UNIT_DIR=/etc/systemd/system
UDEV_DIR=/etc/udev/rules.d
BIN=/usr/local/bin/outpost
UNIT=outpost.service
NR_UNIT=outpost-node-red.service
NR_USER=outpost-node-red
NR_STATE_DIR=/var/lib/outpost-node-red
CHANNEL_TOKEN=/etc/outpost/node-red-channel.token
RULE=99-outpost-rs485.rules
USER_NAME=outpost
MIN_NODE=20
EX_USAGE=64
EX_CONFIG=78

say() { printf 'install: %s\n' "$*"; }
die() { printf 'install: error: %s\n' "$*" >&2; exit "${2:-1}"; }

usage() {
  cat <<'USAGE'
Usage: sudo systemd/install.sh [--root DIR] [--example]

Installs or upgrades Outpost from this clone: /opt/outpost, /usr/local/bin/outpost,
the outpost user, /etc/outpost (config, kept), /var/lib/outpost (journal, kept), the
systemd unit and the udev rule for USB-RS485 adapters; then enables and starts the
service. Without /etc/outpost/site.json the service serves the first-run setup page
(http://THIS-HOST:8080/, its one-time code in /var/lib/outpost/setup-code).

  --root DIR   install into DIR instead of / (users in DIR/etc/passwd; nothing is
               started, reloaded or triggered)
  --example    with no site.json, install the example config to edit by hand
               instead (the service is enabled once it is edited)
  -h, --help   this text
USAGE
}

ROOT=""
EXAMPLE=no
while [ $# -gt 0 ]; do
  case "$1" in
    --example) EXAMPLE=yes; shift ;;
    --root) [ $# -ge 2 ] || die "--root needs a directory" "$EX_USAGE"; ROOT=$2; shift 2 ;;
    --root=*) ROOT=${1#--root=}; shift ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument: $1" "$EX_USAGE" ;;
  esac
done
if [ -n "$ROOT" ]; then
  [ -d "$ROOT" ] || die "--root $ROOT: no such directory" "$EX_USAGE"
  ROOT=$(cd "$ROOT" && pwd)
  [ "$ROOT" != / ] || ROOT=""
fi
# A path as it is on this machine (under --root) vs. as the service will see it.
at() { printf '%s%s' "$ROOT" "$1"; }

[ "$(id -u)" = 0 ] || die "run as root (sudo systemd/install.sh): it creates a user and writes /opt, /etc and /var/lib"

SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
[ -f "$SRC/package.json" ] && grep -q '"name": "outpost"' "$SRC/package.json" ||
  die "$SRC is not an Outpost clone (run systemd/install.sh from the repository)"
case "$SRC/" in
  "$(at "$PREFIX")/"*) die "this clone is $SRC, inside $PREFIX where the installer puts the code; clone the repository elsewhere (for example ~/outpost) and run its systemd/install.sh" ;;
esac
if [ -e "$(at "$PREFIX")/.git" ]; then
  die "$(at "$PREFIX") is a git clone (the earlier manual install); move it away (sudo mv $(at "$PREFIX") /root/outpost-old), then run the installer again: the journal in /var/lib/outpost and /etc/outpost are kept"
fi

# ------------------------------------------------------------------ 1. Node and npm
NODE=$(command -v node) || die "Node.js is not installed: Outpost needs Node $MIN_NODE or newer (README: Install on a Raspberry Pi, step 2)"
node_version=$("$NODE" --version 2>/dev/null) || die "$NODE --version failed"
node_major=${node_version#v}
node_major=${node_major%%.*}
if ! [[ $node_major =~ ^[0-9]+$ ]] || [ "$node_major" -lt "$MIN_NODE" ]; then
  die "Node $node_version at $NODE is too old: Outpost needs Node $MIN_NODE or newer (install Node 22 from NodeSource: README, Install on a Raspberry Pi, step 2)"
fi
case "$NODE" in
  /home/* | /root/*) die "Node at $NODE is in a home directory, which the service cannot see (ProtectHome=yes): install Node system-wide (NodeSource puts it in /usr/bin)" ;;
esac
command -v npm >/dev/null || die "npm is not installed (it comes with NodeSource's nodejs package)"
arch=$(uname -m)
case "$arch" in
  aarch64 | armv7l | x86_64) ;;
  armv6l) die "this is an ARMv6 board (Pi 1, Pi Zero W): Node $MIN_NODE has no build for it; use a Pi 2 or newer, or a Pi Zero 2 W" ;;
  *) say "warning: untested architecture $arch (Raspberry Pi OS is aarch64 or armv7l)" ;;
esac
say "Node $node_version ($NODE), npm $(npm --version), $arch"

# ------------------------------------------------------------------ 2. build the clone
owner=$(stat -c %U "$SRC")
owner_home=$(getent passwd "$owner" | cut -d: -f6 || true)
# Build as the clone's owner, so that sudo leaves no root-owned files in their checkout.
as_owner() {
  if [ "$owner" = root ] || [ "$owner" = UNKNOWN ]; then
    "$@"
  else
    runuser -u "$owner" -- env HOME="${owner_home:-/tmp}" "$@"
  fi
}
# Do the clone's node_modules match its package-lock.json? (npm's own record of what it
# installed is node_modules/.package-lock.json.) Compared by name and version.
deps_current() {
  (cd "$SRC" && "$NODE" -e '
    const fs = require("fs")
    const want = JSON.parse(fs.readFileSync("package-lock.json", "utf8")).packages
    let have
    try { have = JSON.parse(fs.readFileSync("node_modules/.package-lock.json", "utf8")).packages } catch { process.exit(1) }
    for (const [path, p] of Object.entries(want)) {
      if (path === "" || p.link) continue
      const h = have[path]
      if (h === undefined ? !p.optional : h.version !== p.version) process.exit(1)
    }')
}
if deps_current; then
  say "the clone's dependencies match package-lock.json"
else
  say "installing the clone's dependencies (npm ci; the build needs the dev dependencies)"
  (cd "$SRC" && as_owner npm ci --no-audit --no-fund)
fi
# The build's stamp: a hash of what the build reads (the shipped sources, the tsconfigs, the
# lock file that pins TypeScript) and one of what it wrote (every file of dist/). A re-run on an
# unchanged clone (run again to enable after editing site.json) skips the compile, which takes
# minutes on a Pi; a changed source, or any file in dist/ the build did not write, rebuilds.
STAMP=dist/.outpost-build-stamp
sources_hash() {
  (cd "$SRC" && find bin cloud core daemon drivers -name '*.ts' -type f -print0 | LC_ALL=C sort -z |
    xargs -0 sha256sum && sha256sum tsconfig.json tsconfig.ship.json package-lock.json) | sha256sum | cut -d' ' -f1
}
dist_hash() {
  (cd "$SRC" && find dist -type f ! -path "$STAMP" -print0 | LC_ALL=C sort -z | xargs -0 -r sha256sum) | sha256sum | cut -d' ' -f1
}
stamp_now() { printf '%s %s\n' "$(sources_hash)" "$(dist_hash)"; }
if [ -f "$SRC/$STAMP" ] && [ "$(cat "$SRC/$STAMP")" = "$(stamp_now)" ]; then
  say "the build is current (dist/ is what these sources compile to): not compiling again"
else
  say "building (npm run build:ship)"
  # From scratch: a module deleted upstream must not linger in dist/ and get packed. Only what
  # ships (tsconfig.ship.json: the folders package.json "files" packs), not the tests and
  # benchmarks, which would double the compile on a Pi (npm test builds those itself).
  rm -rf "$SRC/dist"
  (cd "$SRC" && as_owner npm run build:ship --silent)
  stamp_now | as_owner tee "$SRC/$STAMP" >/dev/null
fi
CLI_SRC="$SRC/dist/daemon/cli.js"
version=$("$NODE" "$CLI_SRC" --version)

# ------------------------------------------------------------------ 3. user and directories
passwd_file=$(at /etc/passwd)
group_file=$(at /etc/group)
[ -f "$passwd_file" ] && [ -f "$group_file" ] || die "$passwd_file or $group_file is missing"
grep -q '^dialout:' "$group_file" || die "there is no dialout group in $group_file"
prefix_args=()
[ -z "$ROOT" ] || prefix_args=(--prefix "$ROOT")
if ! grep -q "^$USER_NAME:" "$group_file"; then
  groupadd "${prefix_args[@]}" --system "$USER_NAME"
  say "created group $USER_NAME"
fi
if grep -q "^$USER_NAME:" "$passwd_file"; then
  usermod "${prefix_args[@]}" -a -G dialout "$USER_NAME"
else
  useradd "${prefix_args[@]}" --system --gid "$USER_NAME" --groups dialout --home-dir "$STATE_DIR" \
    --no-create-home --shell /usr/sbin/nologin --comment "Outpost EV charging gateway" "$USER_NAME"
  say "created system user $USER_NAME (groups: $USER_NAME, dialout)"
fi
# Numeric ids from the tree's own files: under --root the user does not exist on this machine.
uid=$(awk -F: -v u="$USER_NAME" '$1 == u { print $3 }' "$passwd_file")
gid=$(awk -F: -v g="$USER_NAME" '$1 == g { print $3 }' "$group_file")

install -d -m 0755 "$(at /opt)" "$(at /usr/local/bin)" "$(at "$UNIT_DIR")" "$(at "$UDEV_DIR")"
# Existing directories keep their contents; owner and mode are (re)asserted.
# Group-writable: the service saves site.json from the setup page and the config API (atomic
# rename in this directory, versions beside it). An existing directory gets the mode too.
install -d -o 0 -g "$gid" -m 0770 "$(at "$CONF_DIR")"
chmod 0770 "$(at "$CONF_DIR")"
install -d -o "$uid" -g "$gid" -m 0750 "$(at "$STATE_DIR")"

# Node-RED's own user and directory: it must reach nothing of /var/lib/outpost or /etc/outpost.
if ! grep -q "^$NR_USER:" "$group_file"; then
  groupadd "${prefix_args[@]}" --system "$NR_USER"
fi
if ! grep -q "^$NR_USER:" "$passwd_file"; then
  useradd "${prefix_args[@]}" --system --gid "$NR_USER" --home-dir "$NR_STATE_DIR" \
    --no-create-home --shell /usr/sbin/nologin --comment "Outpost's Node-RED" "$NR_USER"
  say "created system user $NR_USER (Node-RED runs as it, apart from the daemon)"
fi
nr_uid=$(awk -F: -v u="$NR_USER" '$1 == u { print $3 }' "$passwd_file")
nr_gid=$(awk -F: -v g="$NR_USER" '$1 == g { print $3 }' "$group_file")
install -d -o "$nr_uid" -g "$nr_gid" -m 0700 "$(at "$NR_STATE_DIR")"
# An older Outpost kept Node-RED's user directory (and the CSV flow's files) in /var/lib/outpost.
old_nr=$(at "$STATE_DIR/node-red")
if [ -d "$old_nr" ] && [ -z "$(ls -A "$(at "$NR_STATE_DIR")")" ]; then
  cp -a "$old_nr/." "$(at "$NR_STATE_DIR")/"
  if [ -d "$(at "$STATE_DIR/billing-csv")" ]; then cp -a "$(at "$STATE_DIR/billing-csv")" "$(at "$NR_STATE_DIR")/billing-csv"; fi
  chown -R "$nr_uid:$nr_gid" "$(at "$NR_STATE_DIR")"
  rm -rf "$old_nr" "$(at "$STATE_DIR/billing-csv")"
  say "moved Node-RED's user directory from $STATE_DIR/node-red to $NR_STATE_DIR (flows and credentials kept)"
fi
# The channel's credential: both units load it (LoadCredential=); only root reads the file.
if [ ! -s "$(at "$CHANNEL_TOKEN")" ]; then
  (umask 077 && "$NODE" -e 'process.stdout.write(require("crypto").randomBytes(32).toString("base64url") + "\n")' >"$(at "$CHANNEL_TOKEN")")
  chown 0:0 "$(at "$CHANNEL_TOKEN")"
  chmod 0600 "$(at "$CHANNEL_TOKEN")"
  say "created the Node-RED channel credential $CHANNEL_TOKEN"
fi

# ------------------------------------------------------------------ 4. the site config
SITE=$CONF_DIR/site.json
site_file=$(at "$SITE")
example_mark=$(at "$CONF_DIR/.example.sha256")
fresh=no
if [ ! -e "$site_file" ] && [ "$EXAMPLE" = no ]; then
  # The service serves the first-run setup page and writes the file itself (group outpost may write $CONF_DIR).
  fresh=yes
  say "no $SITE yet: the service will serve the first-run setup page to write it"
elif [ ! -e "$site_file" ]; then
  token=$("$NODE" -e 'process.stdout.write(require("crypto").randomBytes(24).toString("base64url"))')
  "$NODE" -e '
    const fs = require("fs")
    const [from, to, token] = process.argv.slice(1)
    const text = fs.readFileSync(from, "utf8")
    const out = text.replace(/"token": "change-me"/, JSON.stringify("token") + ": " + JSON.stringify(token))
    if (out === text) throw new Error(from + ": no api.token to replace")
    fs.writeFileSync(to, out, { mode: 0o640, flag: "wx" })' "$SRC/config/example.json" "$site_file" "$token"
  chown "0:$gid" "$site_file"
  sha256sum <"$site_file" | cut -d' ' -f1 >"$example_mark"
  say "installed the example configuration as $SITE (with a random api.token)"
fi
unedited=no
if [ "$fresh" = no ] && [ -f "$example_mark" ] && [ "$(sha256sum <"$site_file" | cut -d' ' -f1)" = "$(cat "$example_mark")" ]; then
  unedited=yes
fi

# ------------------------------------------------------------------ 5. validate it
if [ "$fresh" = no ]; then
# The service reads it as user outpost (group outpost), not as root.
read -r f_uid f_gid f_mode < <(stat -c '%u %g %a' "$site_file")
f_mode=$((8#$f_mode))
if ! { [ "$f_uid" = "$uid" ] && ((f_mode & 0400)); } && ! { [ "$f_gid" = "$gid" ] && ((f_mode & 040)); } && ! ((f_mode & 04)); then
  die "$SITE is not readable by the outpost user: sudo chgrp outpost $SITE && sudo chmod 0640 $SITE (nothing was installed, upgraded, enabled or restarted)" "$EX_CONFIG"
fi
say "checking $SITE"
set +e
check_out=$("$NODE" "$CLI_SRC" check-config "$site_file" 2>&1)
check_status=$?
set -e
printf '%s\n' "$check_out" | sed "s|^$ROOT||; s|^|  |"
if [ "$check_status" -ne 0 ]; then
  die "$SITE is not valid (check-config exit $check_status): nothing was installed, upgraded, enabled or restarted. Fix the lines above, then run the installer again." "$EX_CONFIG"
fi
fi

# ------------------------------------------------------------------ 6. the code
stage=$(at "$PREFIX.new")
rm -rf "$stage"
work=$(mktemp -d)
trap 'rm -rf "$work" "$stage"' EXIT
chmod 0755 "$work"
[ "$owner" = root ] || [ "$owner" = UNKNOWN ] || chown "$owner" "$work"
# npm pack takes exactly what package.json "files" lists (plus package.json and README.md).
tarball=$(cd "$SRC" && as_owner npm pack --silent --pack-destination "$work")
tarball=$(printf '%s\n' "$tarball" | tail -n 1)
install -d -m 0755 "$stage"
tar -xzf "$work/$tarball" -C "$stage" --strip-components=1 --no-same-owner
install -m 0644 "$SRC/package-lock.json" "$stage/package-lock.json"
# The runtime dependencies of the installed tree serve again when nothing they depend on changed:
# the same package-lock.json, installed to the end (npm's own node_modules/.package-lock.json),
# for the same Node ABI and CPU (the marker below). Re-running the installer after editing
# site.json is the usual way to enable the service, and npm ci takes minutes on a Pi.
abi="node-abi $("$NODE" -p 'process.versions.modules + " " + process.arch')"
ABI_MARK=node_modules/.outpost-node-abi
installed=$(at "$PREFIX")
if [ -f "$installed/package-lock.json" ] && cmp -s "$installed/package-lock.json" "$stage/package-lock.json" &&
  [ -f "$installed/node_modules/.package-lock.json" ] && [ "$(cat "$installed/$ABI_MARK" 2>/dev/null)" = "$abi" ]; then
  say "the runtime dependencies are those installed (same package-lock.json, $abi): copied, not installed again"
  cp -a "$installed/node_modules" "$stage/node_modules"
else
  say "installing $version's runtime dependencies (npm ci --omit=dev --omit=optional)"
  # --omit=optional keeps out typescript (23 MB): our dev typescript satisfies i18next's optional
  # peer, and npm keeps such "devOptional" packages under --omit=dev alone. The only runtime cost
  # is Node-RED's native bcrypt, whose pure-JS fallback (bcryptjs) checks the editor's password.
  (cd "$stage" && npm ci --omit=dev --omit=optional --no-audit --no-fund --loglevel=error)
  printf '%s\n' "$abi" >"$stage/$ABI_MARK"
fi
staged_version=$("$NODE" "$stage/dist/daemon/cli.js" --version)
[ "$staged_version" = "$version" ] || die "the staged package says version $staged_version, expected $version"

systemd_running=no
if [ -z "$ROOT" ] && [ -d /run/systemd/system ]; then systemd_running=yes; fi
# For tests only (test/0-install.test.ts): take the live path under --root, with stand-ins
# for systemctl and udevadm on PATH, since it cannot run without systemd as PID 1.
[ "${OUTPOST_INSTALL_ASSUME_SYSTEMD:-}" != yes ] || systemd_running=yes
was_active=no
if [ "$systemd_running" = yes ] && systemctl is-active --quiet "$UNIT"; then
  was_active=yes
  say "stopping $UNIT for the upgrade (open sessions close 'reboot', relays open)"
  systemctl stop "$UNIT"
fi
target=$(at "$PREFIX")
if [ -e "$target" ]; then
  rm -rf "$target.old"
  mv "$target" "$target.old"
fi
mv "$stage" "$target"
rm -rf "$target.old"
say "installed Outpost $version in $PREFIX"

cat >"$(at "$BIN").tmp" <<EOF
#!/bin/sh
# Installed by Outpost's systemd/install.sh. Run tools as the service user, e.g.
#   sudo -u outpost outpost records --config /etc/outpost/site.json
exec $NODE $PREFIX/dist/bin/outpost.js "\$@"
EOF
chmod 0755 "$(at "$BIN").tmp"
mv "$(at "$BIN").tmp" "$(at "$BIN")"

# The unit names /usr/bin/node (NodeSource's path); another system-wide node is patched in.
sed "s|^ExecStart=/usr/bin/node |ExecStart=$NODE |" "$SRC/systemd/$UNIT" >"$(at "$UNIT_DIR/$UNIT").tmp"
chmod 0644 "$(at "$UNIT_DIR/$UNIT").tmp"
mv "$(at "$UNIT_DIR/$UNIT").tmp" "$(at "$UNIT_DIR/$UNIT")"
sed "s|^ExecStart=/usr/bin/node |ExecStart=$NODE |" "$SRC/systemd/$NR_UNIT" >"$(at "$UNIT_DIR/$NR_UNIT").tmp"
chmod 0644 "$(at "$UNIT_DIR/$NR_UNIT").tmp"
mv "$(at "$UNIT_DIR/$NR_UNIT").tmp" "$(at "$UNIT_DIR/$NR_UNIT")"
install -m 0644 "$SRC/systemd/$RULE" "$(at "$UDEV_DIR/$RULE")"
say "installed $UNIT_DIR/$UNIT, $UNIT_DIR/$NR_UNIT and $UDEV_DIR/$RULE"

# ------------------------------------------------------------------ 7. enable and start
if [ "$systemd_running" = yes ]; then
  systemctl daemon-reload
  if command -v udevadm >/dev/null; then
    # Plugged adapters get the new rule (latency timer, symlink) without re-plugging.
    udevadm control --reload && udevadm trigger --action=change --subsystem-match=tty --subsystem-match=usb-serial ||
      say "warning: udevadm could not reload the rules; re-plug the RS-485 adapters or reboot"
  fi
else
  if [ -n "$ROOT" ]; then why="--root"; else why="systemd is not running"; fi
  say "skipped daemon-reload, udevadm reload/trigger and starting the service ($why)"
fi

started() {
  systemctl restart "$UNIT" || die "$UNIT did not start: see journalctl -u outpost -n 50 (README: Troubleshooting)"
}
if [ "$unedited" = yes ]; then
  say "not enabling $UNIT: $SITE is still the example."
  say "next: edit $SITE (site, buses, outlets, plans, uplink), check it with"
  say "      sudo -u outpost outpost check-config $SITE"
  say "      then run this installer again (or: sudo systemctl enable --now outpost)"
  # Someone ran the example on purpose: leave the service as it was found.
  if [ "$was_active" = yes ]; then started; fi
  exit 0
fi
# Node-RED's unit runs when site.json enables Node-RED (the daemon serves its editor).
node_red=no
[ "$fresh" = yes ] || node_red=$(cd "$(at "$PREFIX")" && "$NODE" -e '
  const c = require("jsonc-parser").parse(require("fs").readFileSync(process.argv[1], "utf8"))
  process.stdout.write(c && c.nodeRed && c.nodeRed.enabled === true ? "yes" : "no")' "$site_file")
if [ "$systemd_running" = yes ]; then
  systemctl enable --quiet "$UNIT"
  started
  say "outpost $version is enabled and running: journalctl -u outpost -f"
  if [ "$node_red" = yes ]; then
    systemctl enable --quiet "$NR_UNIT"
    systemctl restart "$NR_UNIT" || say "warning: $NR_UNIT did not start: journalctl -u outpost-node-red -n 50 (charging goes on without it)"
    say "Node-RED runs as $NR_USER: journalctl -u outpost-node-red -f"
  fi
else
  systemctl --root="${ROOT:-/}" enable --quiet "$UNIT"
  say "enabled $UNIT (it starts at the next boot)"
  if [ "$node_red" = yes ]; then systemctl --root="${ROOT:-/}" enable --quiet "$NR_UNIT"; fi
fi
if [ "$fresh" = yes ]; then
  say "next: from the site's network open http://$(hostname 2>/dev/null || echo THIS-HOST):8080/ and enter the one-time setup code:"
  say "      sudo cat $STATE_DIR/setup-code    (also in: journalctl -u outpost)"
  say "      the page checks the config as check-config does, saves $SITE and starts the site"
elif [ "$node_red" = no ]; then say "Node-RED is not enabled in $SITE: $NR_UNIT is installed, not enabled"; fi
