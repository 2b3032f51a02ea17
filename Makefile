# willi: build, test, release and remote install.
#
#   make build                      ./willi, version stamped from git describe
#   make test                       the test suite (bash test/run.sh)
#   make release                    dist/willi-vX.Y.Z.tar.gz
#   make install TARGET_HOST=host   copy the release to host over ssh and run
#                                   its install.sh there (as root or via sudo)
#   make clean

GO ?= go
# Version stamped into ./willi: the tag, commits since, and -dirty.
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
# Release name: the tag (with commits since it), else v0.0.0-<commit>.
RELEASE_VERSION ?= $(shell git describe --tags 2>/dev/null || echo v0.0.0-$$(git rev-parse --short HEAD 2>/dev/null || echo unknown))
DIST ?= dist
RELEASE := willi-$(RELEASE_VERSION)
TARBALL := $(DIST)/$(RELEASE).tar.gz
# Reproducible archives: file times from the last commit.
SOURCE_DATE_EPOCH ?= $(shell git log -1 --format=%ct 2>/dev/null || echo 0)

TARGET_HOST ?=
SSH ?= ssh
SCP ?= scp

RELEASE_FILES := install.sh willi.socket willi@.service willi-serve.socket willi-serve.service \
	README.md LICENSE \
	contrib/xinetd/willi contrib/tcpserver/run \
	etc/willi.conf.example etc/routes.csv.example

.PHONY: all build test release install clean

all: build

build:
	$(GO) build -ldflags "-X main.version=$(VERSION)" -o willi .

test:
	bash test/run.sh

release: $(RELEASE_FILES)
	rm -rf $(DIST)/$(RELEASE) $(TARBALL)
	mkdir -p $(DIST)/$(RELEASE)
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "-s -w -X main.version=$(RELEASE_VERSION)" \
		-o $(DIST)/$(RELEASE)/willi .
	tar -cf - $(RELEASE_FILES) | tar -xf - -C $(DIST)/$(RELEASE)
	tar -C $(DIST) --sort=name --owner=0 --group=0 --numeric-owner \
		--mtime=@$(SOURCE_DATE_EPOCH) -czf $(TARBALL) $(RELEASE)
	rm -rf $(DIST)/$(RELEASE)
	@echo $(TARBALL)

install: release
	@test -n "$(TARGET_HOST)" || { echo "usage: make install TARGET_HOST=[user@]host" >&2; exit 2; }
	$(SCP) $(TARBALL) $(TARGET_HOST):/tmp/$(RELEASE).tar.gz
	$(SSH) $(TARGET_HOST) 'set -e; d=$$(mktemp -d); \
		tar -xzf /tmp/$(RELEASE).tar.gz -C "$$d"; rm -f /tmp/$(RELEASE).tar.gz; \
		if [ "$$(id -u)" -eq 0 ]; then sh "$$d/$(RELEASE)/install.sh"; \
		else sudo sh "$$d/$(RELEASE)/install.sh"; fi; rm -rf "$$d"'

clean:
	rm -rf willi $(DIST)
