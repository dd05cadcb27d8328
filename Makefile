# Install octomild as a distribution package would lay it out.
#
#   cargo build --release -p octomild            # or: make build
#   sudo make install                             # DESTDIR=/path/to/rootfs PREFIX=/usr
#   make build-cloud && sudo make install-cloud   # optional: octomil-cloud and octomil
#
# `install` copies what is already built and never runs cargo, so an image build can stage a
# cross-built binary: make install TARGET=aarch64-unknown-linux-gnu DESTDIR=rootfs
# (or point BUILD_DIR at any directory that holds the binaries).

PREFIX      ?= /usr
SYSCONFDIR  ?= /etc
DESTDIR     ?=
BINDIR      ?= $(PREFIX)/bin
# systemd's own search paths under PREFIX; /usr/lib works on merged-/usr and split systems.
UNITDIR     ?= $(PREFIX)/lib/systemd/system
SYSUSERSDIR ?= $(PREFIX)/lib/sysusers.d
TMPFILESDIR ?= $(PREFIX)/lib/tmpfiles.d
DOCDIR      ?= $(PREFIX)/share/doc/octomild

CARGO            ?= cargo
CARGO_TARGET_DIR ?= target
PROFILE          ?= release
TARGET           ?=
# cargo puts the dev and test profiles' output in debug/, every other profile's under its name.
PROFILE_DIR       = $(if $(filter dev test,$(PROFILE)),debug,$(PROFILE))
BUILD_DIR        ?= $(CARGO_TARGET_DIR)/$(if $(TARGET),$(TARGET)/)$(PROFILE_DIR)
# The cloud ships with its own profile: release with panic = "unwind", so a bug in the
# embedded MQTT broker ends one connection, not the control plane (docs/mqtt.md).
CLOUD_PROFILE    ?= cloud-release
CLOUD_PROFILE_DIR = $(if $(filter dev test,$(CLOUD_PROFILE)),debug,$(CLOUD_PROFILE))
# A BUILD_DIR given on the command line holds every binary (tests, image builds).
ifeq ($(origin BUILD_DIR),command line)
CLOUD_BUILD_DIR  ?= $(BUILD_DIR)
endif
CLOUD_BUILD_DIR  ?= $(CARGO_TARGET_DIR)/$(if $(TARGET),$(TARGET)/)$(CLOUD_PROFILE_DIR)

INSTALL ?= install

.PHONY: build build-cloud install install-cloud uninstall

build:
	$(CARGO) build --locked --profile $(PROFILE) -p octomild --bin octomild $(if $(TARGET),--target $(TARGET))

build-cloud:
	$(CARGO) build --locked --profile $(CLOUD_PROFILE) -p octomil-cloud --bins $(if $(TARGET),--target $(TARGET))

install:
	@test -x $(BUILD_DIR)/octomild || { echo "$(BUILD_DIR)/octomild is missing: run 'make build' (or cargo build --release -p octomild) first" >&2; exit 1; }
	$(INSTALL) -d -m 0755 $(DESTDIR)$(BINDIR) $(DESTDIR)$(UNITDIR) $(DESTDIR)$(SYSUSERSDIR) \
		$(DESTDIR)$(TMPFILESDIR) $(DESTDIR)$(DOCDIR)
	$(INSTALL) -m 0755 $(BUILD_DIR)/octomild $(DESTDIR)$(BINDIR)/octomild
	$(INSTALL) -m 0644 systemd/octomild.service $(DESTDIR)$(UNITDIR)/octomild.service
	$(INSTALL) -m 0644 systemd/octomil.sysusers $(DESTDIR)$(SYSUSERSDIR)/octomil.conf
	$(INSTALL) -m 0644 systemd/octomil.tmpfiles $(DESTDIR)$(TMPFILESDIR)/octomil.conf
	$(INSTALL) -m 0644 systemd/octomild-plain-credentials.conf $(DESTDIR)$(DOCDIR)/octomild-plain-credentials.conf
	@# /etc/octomil is world-readable (config and CA are not secret; secrets are credentials).
	$(INSTALL) -d -m 0755 $(DESTDIR)$(SYSCONFDIR)/octomil
	$(INSTALL) -m 0644 systemd/octomild.toml.example $(DESTDIR)$(SYSCONFDIR)/octomil/octomild.toml.example

install-cloud:
	@test -x $(CLOUD_BUILD_DIR)/octomil-cloud -a -x $(CLOUD_BUILD_DIR)/octomil || { echo "build octomil-cloud and octomil first: make build-cloud (cargo build --profile cloud-release -p octomil-cloud)" >&2; exit 1; }
	$(INSTALL) -d -m 0755 $(DESTDIR)$(BINDIR)
	$(INSTALL) -m 0755 $(CLOUD_BUILD_DIR)/octomil-cloud $(DESTDIR)$(BINDIR)/octomil-cloud
	$(INSTALL) -m 0755 $(CLOUD_BUILD_DIR)/octomil $(DESTDIR)$(BINDIR)/octomil

# Leaves /etc/octomil and /var/lib/octomil alone: they hold the operator's config and the
# device's identity.
uninstall:
	rm -f $(DESTDIR)$(BINDIR)/octomild $(DESTDIR)$(BINDIR)/octomil-cloud $(DESTDIR)$(BINDIR)/octomil \
		$(DESTDIR)$(UNITDIR)/octomild.service $(DESTDIR)$(SYSUSERSDIR)/octomil.conf \
		$(DESTDIR)$(TMPFILESDIR)/octomil.conf $(DESTDIR)$(DOCDIR)/octomild-plain-credentials.conf \
		$(DESTDIR)$(SYSCONFDIR)/octomil/octomild.toml.example
