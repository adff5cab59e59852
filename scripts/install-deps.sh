#!/usr/bin/env bash
# Install the external programs the integration tests need into $REPO/.deps/.
#
#   scripts/install-deps.sh [haproxy|consul|kafka|compose|python|valgrind|protoc|chromium|otelcol|prometheus|redis|all]...
#
# Idempotent: a component that is already installed is skipped quickly.
# Nothing is installed system-wide except the Debian packages `haproxy`,
# `valgrind`, `protobuf-compiler`, `chromium`, `chromium-driver` and `prometheus` (apt-get) and the Python gRPC packages
# (pip, into the current python3). `all` does not include valgrind, protoc and chromium
# (scripts/bench.sh asks for valgrind; protoc only regenerates the committed
# code of examples/bench/grpc-gateway; chromium is for the admin UI's
# browser test, scripts/admin-ui-test.sh). scripts/test.sh adds prometheus
# (gateway-bin/tests/prometheus.rs runs its own Prometheus; the package's
# system service is kept stopped).
#
# Packages from another Debian suite (Consul from bullseye, compose from
# trixie) come from the Debian mirror this machine's apt already uses: the
# first `deb` entry for the machine's own release in /etc/apt/sources.list,
# /etc/apt/sources.list.d/*.list (one-line format) or *.sources (deb822).
# No mirror host is named here; set DEBIAN_MIRROR to override.
#
#   .deps/bin/consul          Consul 1.8.7 (Debian bullseye package, extracted)
#   .deps/bin/docker-compose  docker compose v2 (Debian trixie package, extracted)
#   .deps/bin/kafka-java      java -cp '.deps/kafka/libs/*' MAIN_CLASS ARGS...
#   .deps/bin/kafka-{server,storage,topics,console-producer,console-consumer}
#   .deps/kafka/libs/*.jar    Apache Kafka (Maven Central) + log4j2 binding
#
# Environment overrides:
#   DEPS_DIR       install root               (default: $REPO/.deps)
#   DEBIAN_MIRROR  Debian archive URI for other suites (default: from apt's sources)
#   KAFKA_VERSION  org.apache.kafka:kafka_2.13 version (default: 4.3.1)
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEPS="${DEPS_DIR:-$REPO/.deps}"
KAFKA_VERSION="${KAFKA_VERSION:-4.3.1}"
# log4j2 version used for the slf4j binding; Kafka 4.x already pulls log4j-core.
LOG4J2_VERSION="${LOG4J2_VERSION:-}"
DEBIAN_MIRROR="${DEBIAN_MIRROR:-}"

say() { printf '[install-deps] %s\n' "$*"; }
die() { printf '[install-deps] ERROR: %s\n' "$*" >&2; exit 1; }

usage() {
  echo "usage: $0 [haproxy|consul|kafka|compose|python|valgrind|protoc|chromium|otelcol|prometheus|redis|all]..." >&2
  exit 2
}

mkdir -p "$DEPS/bin"

# Serialise concurrent runs (e.g. parallel test jobs).
exec 9>"$DEPS/.install.lock"
flock 9

TMPDIRS=()
cleanup() { local d; for d in "${TMPDIRS[@]+"${TMPDIRS[@]}"}"; do rm -rf "$d"; done; }
trap cleanup EXIT

# ---------------------------------------------------------------------------
# The Debian archive URI of this machine's apt sources: the first `deb` entry
# whose suite is the machine's own release (VERSION_CODENAME in
# /etc/os-release, e.g. bookworm; not bookworm-security or -updates) with the
# `main` component. That skips the security archive and third-party
# repositories (their suites are not the release's codename).
# ---------------------------------------------------------------------------
apt_debian_mirror() {
  local codename="" f
  codename="$(. /etc/os-release 2>/dev/null && echo "${VERSION_CODENAME:-}")"
  [ -n "$codename" ] || { echo "[install-deps] no VERSION_CODENAME in /etc/os-release" >&2; return 1; }
  local -a files=()
  [ -f /etc/apt/sources.list ] && files+=(/etc/apt/sources.list)
  for f in /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] && files+=("$f")
  done
  [ ${#files[@]} -gt 0 ] || { echo "[install-deps] no apt sources files" >&2; return 1; }
  awk -v want="$codename" '
    function emit(u) { sub(/\/+$/, "", u); print u; found = 1; exit }
    # deb822 stanza: fields until a blank line.
    function flush(   i, n, t, s, c, u, ok) {
      if (!stanza) return
      stanza = 0
      if (enabled == "no") { reset(); return }
      ok = 0; n = split(types, t, /[ \t]+/); for (i = 1; i <= n; i++) if (t[i] == "deb") ok = 1
      if (!ok) { reset(); return }
      ok = 0; n = split(suites, s, /[ \t]+/); for (i = 1; i <= n; i++) if (s[i] == want) ok = 1
      if (!ok) { reset(); return }
      ok = 0; n = split(comps, c, /[ \t]+/); for (i = 1; i <= n; i++) if (c[i] == "main") ok = 1
      if (!ok) { reset(); return }
      n = split(uris, u, /[ \t]+/); for (i = 1; i <= n; i++) if (u[i] != "") emit(u[i])
      reset()
    }
    function reset() { types = suites = comps = uris = enabled = "" }
    FNR == 1 { flush(); deb822 = (FILENAME ~ /\.sources$/) }
    deb822 {
      if ($0 ~ /^[ \t]*#/) next
      if ($0 ~ /^[ \t]*$/) { flush(); next }
      stanza = 1
      line = $0; key = tolower(line); sub(/:.*/, "", key); val = line; sub(/^[^:]*:[ \t]*/, "", val)
      if (key == "types") types = val
      else if (key == "uris") uris = val
      else if (key == "suites") suites = val
      else if (key == "components") comps = val
      else if (key == "enabled") enabled = tolower(val)
      next
    }
    # One-line format: deb [options] URI SUITE COMPONENT...
    {
      sub(/#.*/, "")
      if ($1 != "deb") next
      i = 2
      if ($i ~ /^\[/) { while (i <= NF && $i !~ /\]$/) i++; i++ }
      uri = $i; suite = $(i + 1)
      if (suite != want) next
      for (j = i + 2; j <= NF; j++) if ($j == "main") emit(uri)
    }
    END { if (!found) flush() }
  ' "${files[@]}"
}

debian_mirror() {
  if [ -z "$DEBIAN_MIRROR" ]; then
    DEBIAN_MIRROR="$(apt_debian_mirror || true)"
    [ -n "$DEBIAN_MIRROR" ] || die "no Debian mirror found in the apt sources (/etc/apt/sources.list, /etc/apt/sources.list.d/); set DEBIAN_MIRROR"
  fi
  echo "$DEBIAN_MIRROR"
}

# ---------------------------------------------------------------------------
# Fetch one .deb from another Debian suite without touching the system's apt
# configuration: private sources list, state and cache directories.
#   fetch_deb SUITE PACKAGE DESTDIR   -> extracts the package into DESTDIR
# ---------------------------------------------------------------------------
fetch_deb() {
  local suite="$1" pkg="$2" dest="$3"
  local tmp; tmp="$(mktemp -d "$DEPS/.apt-$suite.XXXXXX")"; TMPDIRS+=("$tmp")
  mkdir -p "$tmp/state/lists/partial" "$tmp/cache/archives/partial" "$tmp/dl"
  local keyring=/usr/share/keyrings/debian-archive-keyring.gpg
  [ -r "$keyring" ] || die "missing $keyring (apt-get install debian-archive-keyring)"
  local mirror; mirror="$(debian_mirror)"
  say "$pkg: from $mirror $suite" >&2
  echo "deb [signed-by=$keyring] $mirror $suite main" > "$tmp/sources.list"
  local -a opts=(
    -o "Dir::State=$tmp/state"
    -o "Dir::Cache=$tmp/cache"
    -o "Dir::Etc::SourceList=$tmp/sources.list"
    -o "Dir::Etc::SourceParts=/dev/null"
    -o "Dir::Etc::Preferences=/dev/null"
    -o "Dir::Etc::PreferencesParts=/dev/null"
    -o "APT::Sandbox::User=root"
    -o "Acquire::Languages=none"
    -o "Acquire::IndexTargets::deb::DEP-11::DefaultEnabled=false"
    -o "Acquire::IndexTargets::deb::DEP-11-icons::DefaultEnabled=false"
    -o "Acquire::IndexTargets::deb::DEP-11-icons-small::DefaultEnabled=false"
    -o "Acquire::IndexTargets::deb::CNF::DefaultEnabled=false"
  )
  if ! apt-get "${opts[@]}" -qq update >"$tmp/update.log" 2>&1; then
    cat "$tmp/update.log" >&2
    die "apt-get update for Debian '$suite' failed"
  fi
  if ! (cd "$tmp/dl" && apt-get "${opts[@]}" -qq download "$pkg") >"$tmp/download.log" 2>&1; then
    cat "$tmp/download.log" >&2
    die "apt-get download $pkg from Debian '$suite' failed"
  fi
  local deb; deb="$(find "$tmp/dl" -maxdepth 1 -name "${pkg}_*.deb" | head -n1)"
  [ -n "$deb" ] || die "no .deb for $pkg downloaded from '$suite'"
  rm -rf "$tmp/x"; mkdir -p "$tmp/x"
  dpkg -x "$deb" "$tmp/x"
  rm -rf "$dest"
  mv "$tmp/x" "$dest"
  basename "$deb" > "$dest/.deb"
}

# apt_install COMMAND PACKAGE: install a package of the machine's own release
# unless COMMAND is already on PATH.
apt_install() {
  local cmd="$1" pkg="$2" log="/tmp/install-deps-$2.log"
  if command -v "$cmd" >/dev/null 2>&1; then
    say "$pkg: present ($cmd)"
    return 0
  fi
  [ "$(id -u)" = 0 ] || die "$pkg: not installed and not root; run: sudo apt-get install -y $pkg"
  say "$pkg: apt-get install $pkg"
  export DEBIAN_FRONTEND=noninteractive
  if ! apt-get install -y -qq "$pkg" >"$log" 2>&1; then
    say "$pkg: install failed, running apt-get update and retrying"
    apt-get update -qq >>"$log" 2>&1 || true
    apt-get install -y -qq "$pkg" >>"$log" 2>&1 \
      || { tail -n 30 "$log" >&2; die "$pkg: apt-get install failed (log: $log)"; }
  fi
  command -v "$cmd" >/dev/null 2>&1 || die "$pkg: installed but '$cmd' is not on PATH"
}

# valgrind + callgrind_control (same package): scripts/bench.sh's
# instruction counts.
install_valgrind() {
  apt_install valgrind valgrind
  command -v callgrind_control >/dev/null 2>&1 || die "valgrind: callgrind_control missing"
}

# protoc: only to regenerate examples/bench/grpc-gateway's committed code.
install_protoc() { apt_install protoc protobuf-compiler; }

# chromium + chromedriver (Debian packages `chromium`, `chromium-driver`):
# the admin UI's browser test (scripts/admin-ui-test.sh) drives headless
# Chromium with playwright-core, which that script installs with npm.
install_chromium() {
  apt_install chromium chromium
  apt_install chromedriver chromium-driver
  # node and npm for playwright-core (a machine with its own node keeps it).
  apt_install node nodejs
  apt_install npm npm
}

# prometheus (Debian package `prometheus`): gateway-bin/tests/prometheus.rs
# runs the binary as its own process (own config, storage in a temporary
# directory, a free 127.0.0.1 port). The package's system service is not
# wanted: it would scrape nothing of ours and hold port 9090.
install_prometheus() {
  apt_install prometheus prometheus
  if command -v update-rc.d >/dev/null 2>&1; then update-rc.d prometheus disable >/dev/null 2>&1 || true; fi
  if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    systemctl disable --now prometheus >/dev/null 2>&1 || true
  fi
  if [ -x /etc/init.d/prometheus ] && /etc/init.d/prometheus status >/dev/null 2>&1; then
    say "prometheus: stopping the system prometheus service"
    /etc/init.d/prometheus stop >/dev/null 2>&1 || true
  fi
  prometheus --version >/dev/null 2>&1 || die "prometheus: 'prometheus --version' failed"
}

# redis-server (Debian `redis-server`): the store of the cluster-wide rate
# limit. Tests run the binary as their own process on a free 127.0.0.1 port
# with no persistence; the package's system service is stopped and disabled
# (it would hold port 6379 and is never what a test talks to).
install_redis() {
  apt_install redis-server redis-server
  if command -v update-rc.d >/dev/null 2>&1; then update-rc.d redis-server disable >/dev/null 2>&1 || true; fi
  if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    systemctl disable --now redis-server >/dev/null 2>&1 || true
  fi
  if [ -x /etc/init.d/redis-server ] && /etc/init.d/redis-server status >/dev/null 2>&1; then
    say "redis-server: stopping the system redis-server service"
    /etc/init.d/redis-server stop >/dev/null 2>&1 || true
  fi
  redis-server --version >/dev/null 2>&1 || die "redis-server: 'redis-server --version' failed"
}

# link NAME TARGET  (TARGET relative to $DEPS)
link_bin() { ln -sfn "../$2" "$DEPS/bin/$1"; }

# ---------------------------------------------------------------------------
install_haproxy() {
  if command -v haproxy >/dev/null 2>&1; then
    say "haproxy: present ($(haproxy -v 2>/dev/null | head -n1 | awk '{print $3}'))"
    return 0
  fi
  [ "$(id -u)" = 0 ] || die "haproxy: not installed and not root; run: sudo apt-get install -y haproxy"
  say "haproxy: apt-get install haproxy"
  export DEBIAN_FRONTEND=noninteractive
  if ! apt-get install -y -qq haproxy >/tmp/install-deps-haproxy.log 2>&1; then
    say "haproxy: install failed, running apt-get update and retrying"
    apt-get update -qq >>/tmp/install-deps-haproxy.log 2>&1 || true
    apt-get install -y -qq haproxy >>/tmp/install-deps-haproxy.log 2>&1 \
      || { tail -n 30 /tmp/install-deps-haproxy.log >&2; die "haproxy: apt-get install failed (log: /tmp/install-deps-haproxy.log)"; }
  fi
  # The package may have started (or will start at boot) the system service:
  # tests run their own haproxy instances, so make sure it is not running.
  if command -v update-rc.d >/dev/null 2>&1; then update-rc.d haproxy disable >/dev/null 2>&1 || true; fi
  if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    systemctl disable --now haproxy >/dev/null 2>&1 || true
  fi
  if [ -f /run/haproxy.pid ]; then
    local p; p="$(cat /run/haproxy.pid 2>/dev/null || true)"
    if [ -n "$p" ] && kill -0 "$p" 2>/dev/null; then
      say "haproxy: stopping the system haproxy service (pid $p)"
      /etc/init.d/haproxy stop >/dev/null 2>&1 || kill "$p" 2>/dev/null || true
    fi
  fi
  command -v haproxy >/dev/null 2>&1 || die "haproxy: installed but not on PATH"
  haproxy -v >/dev/null 2>&1 || die "haproxy: 'haproxy -v' failed"
}

# ---------------------------------------------------------------------------
install_consul() {
  local bin="$DEPS/bin/consul"
  if [ -x "$bin" ] && "$bin" version >/dev/null 2>&1; then
    say "consul: present ($("$bin" version | head -n1))"
    return 0
  fi
  say "consul: fetching Debian bullseye package 'consul'"
  fetch_deb bullseye consul "$DEPS/consul"
  [ -x "$DEPS/consul/usr/bin/consul" ] || die "consul: package has no usr/bin/consul"
  link_bin consul consul/usr/bin/consul
  "$bin" version >/dev/null 2>&1 || die "consul: '$bin version' failed"
  say "consul: installed $("$bin" version | head -n1)"
}

# ---------------------------------------------------------------------------
install_compose() {
  local bin="$DEPS/bin/docker-compose"
  if [ -x "$bin" ] && "$bin" version >/dev/null 2>&1; then
    say "compose: present ($("$bin" version | head -n1))"
    return 0
  fi
  say "compose: fetching Debian trixie package 'docker-compose'"
  fetch_deb trixie docker-compose "$DEPS/compose"
  local target
  if [ -f "$DEPS/compose/usr/libexec/docker/cli-plugins/docker-compose" ]; then
    target=compose/usr/libexec/docker/cli-plugins/docker-compose
  elif [ -f "$DEPS/compose/usr/bin/docker-compose" ]; then
    target=compose/usr/bin/docker-compose
  else
    die "compose: package contains no docker-compose binary"
  fi
  link_bin docker-compose "$target"
  "$bin" version >/dev/null 2>&1 || die "compose: '$bin version' failed"
  say "compose: installed $("$bin" version | head -n1)"
}

# ---------------------------------------------------------------------------
# Kafka: resolve org.apache.kafka:kafka_2.13 (+ kafka-tools for the CLI tools,
# + a log4j2 slf4j binding) from Maven Central with a generated pom and
# `mvn dependency:copy-dependencies` into .deps/kafka/libs.
# ---------------------------------------------------------------------------
# first_class CLASS... : print the first of the given classes found in the jars
first_class() {
  python3 - "$DEPS/kafka/libs" "$@" <<'PY'
import sys, os, zipfile
libs, classes = sys.argv[1], sys.argv[2:]
names = set()
for f in os.listdir(libs):
    if f.endswith(".jar"):
        with zipfile.ZipFile(os.path.join(libs, f)) as z:
            names.update(z.namelist())
for c in classes:
    if c.replace(".", "/") + ".class" in names:
        print(c); break
PY
}

# write_kafka_pom FILE [GROUP:ARTIFACT:VERSION of the slf4j binding]
write_kafka_pom() {
  local extra=""
  if [ -n "${2:-}" ]; then
    local g a v; IFS=: read -r g a v <<<"$2"
    extra="<dependency><groupId>$g</groupId><artifactId>$a</artifactId><version>$v</version></dependency>"
  fi
  cat > "$1" <<POM
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.deps</groupId>
  <artifactId>kafka-runtime</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId><version>$KAFKA_VERSION</version></dependency>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka-tools</artifactId><version>$KAFKA_VERSION</version></dependency>
    $extra
  </dependencies>
</project>
POM
}

install_kafka() {
  local kdir="$DEPS/kafka" stamp="$DEPS/kafka/.installed-$KAFKA_VERSION"
  if [ -f "$stamp" ] && [ -f "$kdir/libs/kafka_2.13-$KAFKA_VERSION.jar" ] && [ -x "$DEPS/bin/kafka-java" ]; then
    say "kafka: present ($KAFKA_VERSION)"
    return 0
  fi
  command -v java >/dev/null 2>&1 || die "kafka: java not found (apt-get install -y openjdk-17-jre-headless)"
  command -v mvn >/dev/null 2>&1 || die "kafka: mvn not found (apt-get install -y maven)"
  say "kafka: resolving org.apache.kafka:kafka_2.13:$KAFKA_VERSION from Maven Central"
  mkdir -p "$kdir/config"
  local binding_ga binding_version mvnlog="$kdir/mvn.log"
  case "$KAFKA_VERSION" in
    3.*) binding_ga="org.slf4j:slf4j-reload4j"; binding_version="${SLF4J_VERSION:-1.7.36}" ;;
    *)   binding_ga="org.apache.logging.log4j:log4j-slf4j-impl"; binding_version="$LOG4J2_VERSION" ;;
  esac
  if [ -z "$binding_version" ]; then
    # log4j-slf4j-impl must match the log4j-core that Kafka pulls in: read it
    # from the resolved dependency list.
    write_kafka_pom "$kdir/pom.xml" ""
    if ! mvn -B -q -f "$kdir/pom.xml" dependency:list -DincludeScope=runtime \
          -DoutputFile="$kdir/deps.txt" >"$mvnlog" 2>&1; then
      tail -n 40 "$mvnlog" >&2; die "kafka: maven could not resolve kafka_2.13:$KAFKA_VERSION (log: $mvnlog)"
    fi
    binding_version="$(sed -n 's/.*org\.apache\.logging\.log4j:log4j-core:jar:\([^:]*\):.*/\1/p' "$kdir/deps.txt" | head -n1)"
    [ -n "$binding_version" ] || die "kafka: no log4j-core in $kdir/deps.txt; set LOG4J2_VERSION"
  fi
  write_kafka_pom "$kdir/pom.xml" "$binding_ga:$binding_version"
  rm -rf "$kdir/libs.new"
  if ! mvn -B -q -f "$kdir/pom.xml" dependency:copy-dependencies -DincludeScope=runtime \
        -DoutputDirectory="$kdir/libs.new" >"$mvnlog" 2>&1; then
    tail -n 40 "$mvnlog" >&2; die "kafka: maven copy-dependencies failed (log: $mvnlog)"
  fi
  rm -rf "$kdir/libs"; mv "$kdir/libs.new" "$kdir/libs"
  [ -f "$kdir/libs/kafka_2.13-$KAFKA_VERSION.jar" ] || die "kafka: kafka_2.13-$KAFKA_VERSION.jar missing after copy"

  # Quiet log config for the CLI tools (warnings to stderr); the broker's
  # config is written per data dir by scripts/kafka-dev.sh.
  cat > "$kdir/config/log4j2-tools.properties" <<'L4J'
status = error
appender.stderr.type = Console
appender.stderr.name = STDERR
appender.stderr.target = SYSTEM_ERR
appender.stderr.layout.type = PatternLayout
appender.stderr.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = warn
rootLogger.appenderRef.stderr.ref = STDERR
L4J
  cat > "$kdir/config/log4j.properties" <<'L4J'
log4j.rootLogger=WARN, stderr
log4j.appender.stderr=org.apache.log4j.ConsoleAppender
log4j.appender.stderr.Target=System.err
log4j.appender.stderr.layout=org.apache.log4j.PatternLayout
log4j.appender.stderr.layout.ConversionPattern=[%d] %p %m (%c)%n
L4J

  # Main classes move between Kafka versions: pick whichever is in the jars.
  local c_server c_storage c_topics c_producer c_consumer
  c_server="$(first_class kafka.Kafka)"
  c_storage="$(first_class kafka.tools.StorageTool org.apache.kafka.tools.StorageTool)"
  c_topics="$(first_class org.apache.kafka.tools.TopicCommand kafka.admin.TopicCommand)"
  c_producer="$(first_class org.apache.kafka.tools.ConsoleProducer kafka.tools.ConsoleProducer)"
  c_consumer="$(first_class org.apache.kafka.tools.consumer.ConsoleConsumer kafka.tools.ConsoleConsumer)"
  if [ -z "$c_server" ] || [ -z "$c_storage" ]; then die "kafka: kafka.Kafka / StorageTool not found in the jars"; fi
  echo "$c_storage" > "$kdir/.storage-tool-class"   # read by scripts/kafka-dev.sh

  cat > "$DEPS/bin/kafka-java" <<'SH'
#!/usr/bin/env bash
# kafka-java MAIN_CLASS ARGS...  ==  java -cp '<deps>/kafka/libs/*' MAIN_CLASS ARGS...
# Overrides (whitespace-separated JVM flags): KAFKA_HEAP_OPTS (default -Xmx256m),
# KAFKA_JVM_OPTS (default: fast-startup flags), KAFKA_LOG4J_OPTS (default:
# warnings only, to stderr).
set -euo pipefail
DEPS="$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.." && pwd)"
[ $# -ge 1 ] || { echo "usage: kafka-java MAIN_CLASS [ARGS...]" >&2; exit 2; }
read -r -a heap <<<"${KAFKA_HEAP_OPTS:--Xmx256m}"
read -r -a jvm <<<"${KAFKA_JVM_OPTS:--XX:+UseSerialGC -XX:TieredStopAtLevel=1}"
if [ -n "${KAFKA_LOG4J_OPTS:-}" ]; then
  read -r -a log <<<"$KAFKA_LOG4J_OPTS"
else
  log=("-Dlog4j2.configurationFile=$DEPS/kafka/config/log4j2-tools.properties"
       "-Dlog4j.configuration=file:$DEPS/kafka/config/log4j.properties")
fi
exec java "${heap[@]}" "${jvm[@]}" "${log[@]}" -cp "$DEPS/kafka/libs/*" "$@"
SH
  chmod +x "$DEPS/bin/kafka-java"
  local name cls
  for name in server storage topics console-producer console-consumer; do
    case "$name" in
      server) cls="$c_server" ;; storage) cls="$c_storage" ;; topics) cls="$c_topics" ;;
      console-producer) cls="$c_producer" ;; console-consumer) cls="$c_consumer" ;;
    esac
    [ -n "$cls" ] || continue
    # shellcheck disable=SC2016
    printf '#!/usr/bin/env bash\nexec "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/kafka-java" %s "$@"\n' "$cls" > "$DEPS/bin/kafka-$name"
    chmod +x "$DEPS/bin/kafka-$name"
  done
  rm -f "$kdir"/.installed-*
  echo "$KAFKA_VERSION" > "$stamp"
  say "kafka: installed $KAFKA_VERSION ($(find "$kdir/libs" -name '*.jar' | wc -l) jars, storage tool $c_storage)"
}

# ---------------------------------------------------------------------------
install_python() {
  command -v python3 >/dev/null 2>&1 || die "python: python3 not found"
  if python3 -c 'import grpc, grpc_tools, grpc_health' >/dev/null 2>&1; then
    say "python: grpc packages present"
    return 0
  fi
  say "python: pip install grpcio grpcio-tools grpcio-health-checking protobuf"
  python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore \
      grpcio grpcio-tools grpcio-health-checking protobuf \
    || die "python: pip install failed"
  python3 -c 'import grpc, grpc_tools, grpc_health' || die "python: grpc modules still not importable"
}

# ---------------------------------------------------------------------------
# A minimal OpenTelemetry Collector (OTLP receiver + file exporter) built
# with `go build` from tools/otelcol (modules from the Go module proxy).
# Rebuilt only when its sources change (their hash is kept beside it).
install_otelcol() {
  command -v go >/dev/null 2>&1 || die "otelcol: go not found"
  local src="$REPO/tools/otelcol" bin="$DEPS/bin/otelcol-fg" want have=""
  want="$(cat "$src/go.mod" "$src/go.sum" "$src/main.go" | sha256sum | cut -d' ' -f1)"
  [ -f "$bin.sha256" ] && have="$(cat "$bin.sha256")"
  if [ -x "$bin" ] && [ "$have" = "$want" ]; then
    say "otelcol: present"
    return 0
  fi
  say "otelcol: go build (first time: a few minutes)"
  (cd "$src" && go build -o "$bin.tmp" .) || die "otelcol: go build failed"
  mv "$bin.tmp" "$bin"
  echo "$want" > "$bin.sha256"
  say "otelcol: installed $bin"
}

# ---------------------------------------------------------------------------
[ $# -ge 1 ] || set -- all
want=()
for arg in "$@"; do
  case "$arg" in
    all) want+=(haproxy consul compose kafka python otelcol) ;;
    haproxy|consul|compose|kafka|python|valgrind|protoc|chromium|otelcol|prometheus|redis) want+=("$arg") ;;
    -h|--help) usage ;;
    *) echo "unknown component: $arg" >&2; usage ;;
  esac
done
done_list=" "
for c in "${want[@]}"; do
  case "$done_list" in *" $c "*) continue ;; esac
  "install_$c"
  done_list+="$c "
done
