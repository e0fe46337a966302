#!/usr/bin/env bash
# The end-to-end demo on defaults: make two real images, make signing keys, build a bundle from
# v1 to v2, sign it "offline", verify it, apply it on a pretend device that holds v1, and show
# with skopeo that the rebuilt image is the source image (same config digest, same layers).
# Then the device side for real (registry, plugin, uploads, push, the fleet ledger) and, where a
# Docker engine is installed and we are root, the released IoT Edge module started from it as
# edgeAgent does, with pulling forbidden.
# Needs no arguments; writes everything under ./demo-output (removed and made anew).
set -euo pipefail
cd "$(dirname "$0")"
scripts/install-deps.sh --demo

# Bold headings only on a terminal; a log file gets plain text.
if [ -t 1 ]; then
  step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
else
  step() { printf '\n== %s\n' "$*"; }
fi
# A step that shows the device saying no on purpose says so before it runs.
expect_refusal() { printf '(expected: %s)\n' "$*"; }
run() { printf '$ %s\n' "$*"; "$@"; }

step "Building sideload (release; the first build takes about 15 minutes on 2 cores, later ones seconds)"
cargo build --release --locked --workspace --bins --examples
# cargo builds into $CARGO_TARGET_DIR when it is set.
BIN="${CARGO_TARGET_DIR:-target}/release"
OUT=demo-output
rm -rf "$OUT"
mkdir -p "$OUT"/{images,device,keys,offline}

step "1. Two real images from real files: edge/app:v1 and edge/app:v2 (same base layer, updated app layer)"
run "$BIN/examples/make-demo-images" "$OUT/images"

step "2. The device already holds v1, as 'docker save' writes it"
run skopeo copy --quiet "oci:$OUT/images/app-v1:v1" "docker-archive:$OUT/device/app-v1.tar:edge/app:v1"

step "3. Three release keys on the air-gapped signing machine"
for name in alice bob carol; do
  run "$BIN/sideload-sign" keygen --name "$name" --dir "$OUT/keys" --repositories 'edge/*' >/dev/null
done
{
  echo "# Device trust policy: any 2 of these 3 keys, for repositories under edge/"
  echo "threshold = 2"
  for name in alice bob carol; do "$BIN/sideload-sign" pubkey "$OUT/keys/$name.pub" --repositories 'edge/*'; done
} >"$OUT/device/trust.toml"
echo "wrote $OUT/device/trust.toml (2 of 3)"

step "4. CI builds the bundle v1 → v2 against what the device holds (unsigned) and exports the statement"
run "$BIN/sideload" build "oci:$OUT/images/app-v2:v2" --base "docker-archive:$OUT/device/app-v1.tar" \
  --output "$OUT/app-v2.bundle" --repository edge/app --tag v2 \
  --ordered-by "demo.sh" --contact "release@example.com" \
  --statement-out "$OUT/offline/app-v2.statement.json"

step "5. Offline: alice and bob sign the statement ($(stat -c %s "$OUT/offline/app-v2.statement.json") bytes cross the air gap, not the payload)"
run "$BIN/sideload-sign" sign --key "$OUT/keys/alice.key" "$OUT/offline/app-v2.statement.json" -o "$OUT/offline/alice.sig"
run "$BIN/sideload-sign" sign --key "$OUT/keys/bob.key" "$OUT/offline/app-v2.statement.json" -o "$OUT/offline/bob.sig"

step "6. Attach the signatures (each checked against the statement with its public key; only the slot changes)"
run "$BIN/sideload" attach "$OUT/app-v2.bundle" "$OUT/offline/alice.sig" "$OUT/offline/bob.sig" --policy "$OUT/device/trust.toml"
run "$BIN/sideload" inspect "$OUT/app-v2.bundle"

step "7. On the device: verify against the trust policy"
run "$BIN/sideload" verify "$OUT/app-v2.bundle" --policy "$OUT/device/trust.toml" --state "$OUT/device/state.json"

step "8. On the device: apply, with the images it holds as bases"
run "$BIN/sideload" apply "$OUT/app-v2.bundle" --policy "$OUT/device/trust.toml" \
  --base-dir "$OUT/device" --state "$OUT/device/state.json" \
  --output "docker-archive:$OUT/device/app-v2.tar"

step "9. Check with skopeo: the rebuilt image is the source image"
src_config=$(skopeo inspect --config --raw "oci:$OUT/images/app-v2:v2" | sha256sum | cut -d' ' -f1)
new_config=$(skopeo inspect --config --raw "docker-archive:$OUT/device/app-v2.tar" | sha256sum | cut -d' ' -f1)
echo "config digest (image ID): source sha256:$src_config"
echo "                          rebuilt sha256:$new_config"
[ "$src_config" = "$new_config" ] || { echo "MISMATCH: config differs" >&2; exit 1; }
# The layers: hash every layer.tar in the rebuilt archive and compare with the config's diff_ids.
python3 - "$OUT/device/app-v2.tar" <<'PY'
import hashlib, json, sys, tarfile
with tarfile.open(sys.argv[1]) as t:
    manifest = json.load(t.extractfile("manifest.json"))[0]
    config = json.load(t.extractfile(manifest["Config"]))
    for i, (name, diff_id) in enumerate(zip(manifest["Layers"], config["rootfs"]["diff_ids"])):
        h = hashlib.sha256()
        f = t.extractfile(name)
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
        actual = "sha256:" + h.hexdigest()
        print(f"layer {i}: {actual} {'==' if actual == diff_id else '!='} diff_id")
        if actual != diff_id:
            sys.exit(1)
PY
echo "the rebuilt image has the source's config and exactly its layers"

step "10. Sizes"
layers_size=$(du -cb "$OUT"/images/app-v2/blobs/sha256/* | tail -1 | cut -f1)
bundle_size=$(stat -c %s "$OUT/app-v2.bundle")
echo "image v2 as stored (gzip blobs): $layers_size bytes; bundle v1 → v2: $bundle_size bytes"

step "11. What a device refuses"
cp "$OUT/app-v2.bundle" "$OUT/tampered.bundle"
printf 'X' | dd of="$OUT/tampered.bundle" bs=1 seek=$(( $(stat -c %s "$OUT/tampered.bundle") - 100 )) conv=notrunc status=none
expect_refusal "the device refuses a bundle with one payload byte changed: REFUSED, exit 3"
printf '$ sideload verify tampered.bundle (one payload byte changed)\n'
"$BIN/sideload" verify "$OUT/tampered.bundle" --policy "$OUT/device/trust.toml" && exit 1 || echo "(exit $?)"
expect_refusal "the device refuses a bundle it already applied (a replay, seen as a rollback): REFUSED, exit 3"
printf '$ sideload verify app-v2.bundle again (already applied: replay)\n'
"$BIN/sideload" verify "$OUT/app-v2.bundle" --policy "$OUT/device/trust.toml" --state "$OUT/device/state.json" && exit 1 || echo "(exit $?)"

step "12. The device daemon: a local registry on loopback, the plugin in front of it, an upload"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
REG_PORT=$(free_port); PLUGIN_PORT=$(free_port)
mkdir -p "$OUT/registry" "$OUT/plugin"
cat >"$OUT/registry/config.yml" <<YML
version: 0.1
log: {level: warn, accesslog: {disabled: true}}
storage: {filesystem: {rootdirectory: $PWD/$OUT/registry/data}, delete: {enabled: true}}
http: {addr: 127.0.0.1:$REG_PORT, secret: sideload-demo}
YML
cat >"$OUT/plugin/registry-plugin.toml" <<TOML
listen = "127.0.0.1:$PLUGIN_PORT"
device_id = "demo-device"
data_dir = "$PWD/$OUT/plugin/data"
trust_policy = "$PWD/$OUT/device/trust.toml"
[registry]
url = "http://127.0.0.1:$REG_PORT"
TOML
pids=()
ENGINE=""; ENGINE_DIR=""; engine_pid=""
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  if [ -n "$engine_pid" ]; then
    kill "$engine_pid" 2>/dev/null || true
  fi
  wait 2>/dev/null || true
  if [ -n "$ENGINE_DIR" ]; then
    # Anything the engine left mounted under its directories, deepest first.
    awk -v d="$ENGINE_DIR" '$2 ~ "^"d {print $2}' /proc/self/mounts | sort -r | xargs -r umount -l 2>/dev/null || true
    rm -rf "$ENGINE_DIR"
  fi
}
trap cleanup EXIT
# The device's container engine: Debian's dockerd (moby, what IoT Edge runs), all its state in a
# directory of its own, no host networking touched. Needs root; without it the demo skips the
# engine and ends at the registry.
if [ "$(id -u)" -eq 0 ] && command -v dockerd >/dev/null 2>&1; then
  ENGINE_DIR=$(mktemp -d /tmp/sideload-demo-engine.XXXXXX)
  ENGINE="$ENGINE_DIR/docker.sock"
  dockerd --data-root "$ENGINE_DIR/data" --exec-root "$ENGINE_DIR/exec" --pidfile "$ENGINE_DIR/docker.pid" \
    --host "unix://$ENGINE" --iptables=false --ip6tables=false --ip-masq=false --bridge=none \
    >"$OUT/engine.log" 2>&1 & engine_pid=$!
  for _ in $(seq 1 150); do curl -fsS --unix-socket "$ENGINE" http://docker/_ping >/dev/null 2>&1 && break; sleep 0.2; done
  curl -fsS --unix-socket "$ENGINE" http://docker/_ping >/dev/null || { cat "$OUT/engine.log" >&2; exit 1; }
  echo "the device's Docker engine: dockerd on $ENGINE (log: $OUT/engine.log)"
  cat >>"$OUT/plugin/registry-plugin.toml" <<TOML
[engine]
kind = "docker"
socket = "$ENGINE"
pull_from = "127.0.0.1:$PLUGIN_PORT"
upstream_hosts = ["registry.example"]
TOML
fi
docker-registry serve "$OUT/registry/config.yml" >"$OUT/registry/log" 2>&1 & pids+=($!)
until curl -fsS "http://127.0.0.1:$REG_PORT/v2/" >/dev/null 2>&1; do sleep 0.2; done
echo "registry on 127.0.0.1:$REG_PORT (loopback only); the device holds v1 in it:"
run skopeo copy --quiet --dest-tls-verify=false "docker-archive:$OUT/device/app-v1.tar" "docker://127.0.0.1:$REG_PORT/edge/app:v1"
"$BIN/sideload-registry-plugin" --config "$OUT/plugin/registry-plugin.toml" >"$OUT/plugin/stdout" 2>"$OUT/plugin/log" & pids+=($!)
until curl -fsS "http://127.0.0.1:$PLUGIN_PORT/sideload/v1/health" >/dev/null 2>&1; do sleep 0.2; done
PLUGIN="http://127.0.0.1:$PLUGIN_PORT"
echo "plugin on $PLUGIN (log: $OUT/plugin/log)"
printf '$ curl -X POST %s/sideload/v1/uploads\n' "$PLUGIN"
location=$(curl -fsS -X POST -H "Bundle-Name: app-v2.bundle" "$PLUGIN/sideload/v1/uploads" | python3 -c 'import json,sys; print(json.load(sys.stdin)["location"])')
size=$(stat -c %s "$OUT/app-v2.bundle"); half=$((size / 2))
echo "upload: $location; sending the first $half of $size bytes, then the link 'drops'"
head -c "$half" "$OUT/app-v2.bundle" | curl -sS -X PATCH -H "Upload-Offset: 0" --data-binary @- "$PLUGIN$location" -o /dev/null
offset=$(curl -fsS -I "$PLUGIN$location" | tr -d '\r' | awk -F': ' 'tolower($1)=="upload-offset"{print $2}')
echo "the device holds $offset bytes; resuming from there"
printf '$ curl -X PATCH -H "Upload-Offset: %s" --data-binary @rest %s\n' "$offset" "$PLUGIN$location"
tail -c +"$((offset + 1))" "$OUT/app-v2.bundle" | curl -fsS -X PATCH -H "Upload-Offset: $offset" --data-binary @- "$PLUGIN$location"
id=$("$BIN/sideload" inspect "$OUT/app-v2.bundle" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["statement_digest"])')
for _ in $(seq 1 300); do
  state=$(curl -fsS "$PLUGIN/sideload/v1/bundles/$id" | python3 -c 'import json,sys; print(json.load(sys.stdin)["bundle"]["state"])')
  [ "$state" = queued ] || [ "$state" = applying ] || break
  sleep 0.2
done
echo "bundle $id: $state"
[ "$state" = applied ] || { cat "$OUT/plugin/log" >&2; exit 1; }
if [ -n "$ENGINE" ]; then
  for _ in $(seq 1 300); do
    engine=$(curl -fsS "$PLUGIN/sideload/v1/bundles/$id" | python3 -c 'import json,sys; print(json.load(sys.stdin)["bundle"].get("engine") or "")')
    [ -z "$engine" ] || break
    sleep 0.2
  done
  echo "container engine: $engine"
  printf '$ docker image ls --digests edge/app  (and the other names)\n'
  docker -H "unix://$ENGINE" image ls --digests --format '  {{.Repository}}:{{.Tag}} {{.Digest}} {{.ID}}'
fi

step "13. Pull the rebuilt image back through the plugin, as the edge agent's engine would"
run skopeo copy --quiet --src-tls-verify=false "docker://127.0.0.1:$PLUGIN_PORT/edge/app:v2" "docker-archive:$OUT/device/pulled-v2.tar:edge/app:v2"
pulled_config=$(skopeo inspect --config --raw "docker-archive:$OUT/device/pulled-v2.tar" | sha256sum | cut -d' ' -f1)
echo "config digest pulled through the plugin: sha256:$pulled_config"
[ "$src_config" = "$pulled_config" ] || { echo "MISMATCH: config differs" >&2; exit 1; }
src_manifest=sha256:$(skopeo inspect --raw "oci:$OUT/images/app-v2:v2" | sha256sum | cut -d' ' -f1)
echo "the source's manifest digest: $src_manifest; pulling edge/app@ that digest through the plugin:"
run skopeo inspect --raw --tls-verify=false "docker://127.0.0.1:$PLUGIN_PORT/edge/app@$src_manifest" >/dev/null
echo "the device serves the very manifest the source has (pin it by digest; its signatures still apply)"
expect_refusal "a push through the plugin is denied: the registry is read-only from outside, bundles are the only way in"
printf '$ skopeo copy ... docker://127.0.0.1:%s/edge/other:v1 (a write through the plugin)\n' "$PLUGIN_PORT"
if skopeo copy --quiet --dest-tls-verify=false "docker-archive:$OUT/device/app-v1.tar" "docker://127.0.0.1:$PLUGIN_PORT/edge/other:v1" >"$OUT/denied-push.log" 2>&1; then
  echo "the plugin accepted a push" >&2; exit 1
fi
reason=$(grep -o 'denied: [^"]*' "$OUT/denied-push.log" | head -n 1) || true
echo "  refused as expected: ${reason:-see $OUT/denied-push.log}"
echo "inventory (GET /sideload/v1/inventory), as sideload build will take it:"
curl -fsS "$PLUGIN/sideload/v1/inventory" | python3 -c '
import json, sys
inv = json.load(sys.stdin)
for i in inv["images"]:
    print("  %s:%s %s... %d layers" % (i["repository"], ",".join(i["tags"]), i["manifest_digest"][:19], len(i["diff_ids"])))
print("  sequences:", inv["sequences"])'

step "14. sideload push over a link that breaks: edge/app:v2 as a whole image (no base), capped to 1 Mbit/s, cut, resumed"
"$BIN/sideload" build "oci:$OUT/images/app-v2:v2" --output "$OUT/app-v2-full.bundle" \
  --repository edge/app --tag v2-full --ordered-by "demo.sh" --contact "release@example.com" \
  --statement-out "$OUT/offline/app-v2-full.statement.json" >/dev/null
for name in alice bob; do
  "$BIN/sideload-sign" sign --key "$OUT/keys/$name.key" "$OUT/offline/app-v2-full.statement.json" -o "$OUT/offline/$name-full.sig" >/dev/null
done
"$BIN/sideload" attach "$OUT/app-v2-full.bundle" "$OUT/offline/alice-full.sig" "$OUT/offline/bob-full.sig" --policy "$OUT/device/trust.toml"
echo "app-v2-full.bundle: $(stat -c %s "$OUT/app-v2-full.bundle") bytes, signed by alice and bob; the client is killed after 4 s"
printf '$ sideload push app-v2-full.bundle --to %s --limit-rate 1mbit
' "$PLUGIN"
"$BIN/sideload" push "$OUT/app-v2-full.bundle" --to "$PLUGIN" --limit-rate 1mbit & push_pid=$!
sleep 4
kill -KILL "$push_pid"
wait "$push_pid" 2>/dev/null || echo "(the client was killed after 4 s, as planned)"
printf '$ sideload push app-v2-full.bundle --to %s --wait --json
' "$PLUGIN"
"$BIN/sideload" push "$OUT/app-v2-full.bundle" --to "$PLUGIN" --wait --json >"$OUT/push.json"
python3 - "$OUT/push.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))["bundles"][0]
print("  %s: resumed and applied; the device already held %d of %d bytes and took the other %d"
      % (r["name"], r["held_at_start"], r["size"], r["held"] - r["held_at_start"]))
assert r["state"] == "applied" and r["held_at_start"] > 0 and r["held"] == r["size"], r
PY

step "15. The fleet ledger: what the device holds, a deployment that waits for it, the manifest for release"
export SIDELOAD_FLEET_DATABASE="$OUT/fleet/fleet.db"
mkdir -p "$OUT/fleet"
run "$BIN/sideload" fleet ingest --device-url "$PLUGIN"
# Two IoT Edge deployments: the app at v2 (on the device now), and one adding a v3 nobody has.
python3 - "$OUT/fleet" <<'PY'
import json, sys
def module(image, policy=None):
    m = {"version": "1.0", "type": "docker", "status": "running", "restartPolicy": "always"}
    if policy:
        m["imagePullPolicy"] = policy
    m["settings"] = {"image": image, "createOptions": "{}"}
    return m
for name, modules in [
    ("deployment.json", {"app": module("registry.example/edge/app:v2", "on-create")}),
    ("deployment-next.json", {"app": module("registry.example/edge/app:v2"),
                              "app-next": module("registry.example/edge/app:v3")}),
]:
    doc = {"modulesContent": {"$edgeAgent": {"properties.desired": {
        "schemaVersion": "1.1",
        "runtime": {"type": "docker", "settings": {"minDockerVersion": "v1.25"}},
        "systemModules": {}, "modules": modules}}}}
    open(f"{sys.argv[1]}/{name}", "w").write(json.dumps(doc, indent=2) + "\n")
PY
device_id=$(curl -fsS "$PLUGIN/sideload/v1/inventory" | python3 -c 'import json,sys; print(json.load(sys.stdin)["device"])')
run "$BIN/sideload" fleet deployment demo-next --manifest "$OUT/fleet/deployment-next.json" --device "$device_id" --ordered-by demo.sh
expect_refusal "the gate holds back demo-next: its edge/app:v3 is on no device (exit 4)"
printf '$ sideload fleet gate --deployment demo-next\n'
if "$BIN/sideload" fleet gate --deployment demo-next; then
  echo "gate released a manifest whose edge/app:v3 is on no device" >&2; exit 1
else
  echo "(held back: exit $?)"
fi
run "$BIN/sideload" fleet deployment demo-rollout --manifest "$OUT/fleet/deployment.json" --device "$device_id" --ordered-by demo.sh
run "$BIN/sideload" fleet gate --deployment demo-rollout
if [ -n "$ENGINE" ]; then
  # moby holds a digest reference only under the registry it pulled from: the device's own
  # (docs/engines.md), so the release pins the device-local name.
  run "$BIN/sideload" fleet rewrite "$OUT/fleet/deployment.json" --pin --device-registry "127.0.0.1:$PLUGIN_PORT" -o "$OUT/fleet/deployment.release.json"
else
  run "$BIN/sideload" fleet rewrite "$OUT/fleet/deployment.json" --pin -o "$OUT/fleet/deployment.release.json"
fi
grep -n '"image"\|imagePullPolicy' "$OUT/fleet/deployment.release.json"
run "$BIN/sideload" fleet gate "$OUT/fleet/deployment.release.json" --deployment demo-rollout
run "$BIN/sideload" fleet status --svg "$OUT/fleet/transfers.svg"

if [ -n "$ENGINE" ]; then
  step "16. The edge agent starts the released module from the device's engine, pulling forbidden"
  # What edgeAgent does with "imagePullPolicy": "never": Engine API create with the image exactly
  # as the manifest writes it (create never pulls), start, and here: wait and read its output.
  python3 - "$OUT/fleet/deployment.release.json" "$ENGINE" <<'PY'
import http.client, json, socket, sys
manifest, engine = sys.argv[1], sys.argv[2]
class Unix(http.client.HTTPConnection):
    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(engine)
def api(method, path, body=None):
    c = Unix("docker", timeout=120)
    c.request(method, path, body=None if body is None else json.dumps(body),
              headers={"Content-Type": "application/json"})
    r = c.getresponse()
    data = r.read()
    if r.status >= 300:
        sys.exit(f"{method} {path}: {r.status} {data.decode(errors='replace')}")
    return data
def demux(raw):
    out = b""
    while len(raw) >= 8:
        n = int.from_bytes(raw[4:8], "big")
        out, raw = out + raw[8:8 + n], raw[8 + n:]
    return out.decode(errors="replace")
desired = json.load(open(manifest))["modulesContent"]["$edgeAgent"]["properties.desired"]
for name, module in desired["modules"].items():
    image = module["settings"]["image"]
    options = json.loads(module["settings"].get("createOptions") or "{}")
    options["Image"] = image
    options.setdefault("HostConfig", {})["NetworkMode"] = "none"
    print(f"$ POST /containers/create  Image={image}  (imagePullPolicy {module['imagePullPolicy']})")
    cid = json.loads(api("POST", f"/containers/create?name=demo-{name}", options))["Id"]
    api("POST", f"/containers/{cid}/start")
    code = json.loads(api("POST", f"/containers/{cid}/wait"))["StatusCode"]
    logs = demux(api("GET", f"/containers/{cid}/logs?stdout=true&stderr=true"))
    api("DELETE", f"/containers/{cid}?force=true")
    print(f"  module {name} ran and printed: {logs.strip()}  (exit {code})")
    assert code == 0 and "edge app 1.1" in logs, logs
PY
else
  step "16. (skipped: the released module is started from a Docker engine only as root with dockerd installed)"
fi

step "Done: everything is in $OUT/"
