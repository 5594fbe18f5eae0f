# Build and install snapinst with its boot hooks.
#   make                 build the release binary
#   sudo make install    install the binary, the systemd units, the initramfs-tools hook, the dracut module, the
#                        GRUB drop-in and the dpkg hook
#   sudo make enable     enable the units and rebuild the initramfs
#   make docs            build and check the man pages and shell completions (target/docs)
#   sudo make install-docs  install them
#   sudo make install-config  install the default configuration (/etc/snapinst/snapinst.toml), unless one exists
#   sudo make deb        build the Debian package (scripts/deb.sh: target/debian/snapinst_<version>_amd64.deb)
PREFIX ?= /usr
DESTDIR ?=
SBINDIR = $(DESTDIR)$(PREFIX)/sbin
UNITDIR = $(DESTDIR)/lib/systemd/system
ITDIR = $(DESTDIR)/usr/share/initramfs-tools
DRACUTDIR = $(DESTDIR)/usr/lib/dracut/modules.d/90snapinst
GRUBDIR = $(DESTDIR)/etc/default/grub.d
DPKGDIR = $(DESTDIR)/etc/dpkg/dpkg.cfg.d

.PHONY: all install install-bin install-hooks enable docs install-docs install-docs-built install-config deb
all:
	cargo build --release

install: install-bin install-hooks

install-bin:
	install -D -m 0755 target/release/snapinst $(SBINDIR)/snapinst

install-hooks:
	install -D -m 0644 hooks/systemd/snapinst-recover.service $(UNITDIR)/snapinst-recover.service
	install -D -m 0644 hooks/systemd/snapinst-bless.service $(UNITDIR)/snapinst-bless.service
	install -D -m 0755 hooks/initramfs-tools/hooks/snapinst $(ITDIR)/hooks/snapinst
	install -D -m 0755 hooks/initramfs-tools/scripts/local-premount/snapinst $(ITDIR)/scripts/local-premount/snapinst
	install -D -m 0755 hooks/dracut/90snapinst/module-setup.sh $(DRACUTDIR)/module-setup.sh
	install -D -m 0755 hooks/dracut/90snapinst/snapinst-boot.sh $(DRACUTDIR)/snapinst-boot.sh
	install -D -m 0644 hooks/grub/snapinst.cfg $(GRUBDIR)/snapinst.cfg
	install -D -m 0644 hooks/dpkg/snapinst $(DPKGDIR)/snapinst

enable:
	systemctl enable snapinst-recover.service snapinst-bless.service
	if command -v update-initramfs >/dev/null; then update-initramfs -u; elif command -v dracut >/dev/null; then dracut -f; fi

docs:
	bash scripts/docs.sh target/docs

install-docs: docs install-docs-built

install-docs-built:
	install -d $(DESTDIR)$(PREFIX)/share/man/man5 $(DESTDIR)$(PREFIX)/share/man/man8
	install -m 0644 target/docs/man5/*.5 $(DESTDIR)$(PREFIX)/share/man/man5/
	install -m 0644 target/docs/man8/*.8 $(DESTDIR)$(PREFIX)/share/man/man8/
	install -D -m 0644 target/docs/completions/snapinst.bash $(DESTDIR)$(PREFIX)/share/bash-completion/completions/snapinst
	install -D -m 0644 target/docs/completions/_snapinst $(DESTDIR)$(PREFIX)/share/zsh/vendor-completions/_snapinst
	install -D -m 0644 target/docs/completions/snapinst.fish $(DESTDIR)$(PREFIX)/share/fish/vendor_completions.d/snapinst.fish

install-config:
	test -e $(DESTDIR)/etc/snapinst/snapinst.toml || install -D -m 0644 config/snapinst.toml $(DESTDIR)/etc/snapinst/snapinst.toml

deb:
	bash scripts/deb.sh
