#!/bin/bash
# dracut module: snapinst's boot-time recovery and failed-boot fallback, before the root is mounted.
check() {
    require_binaries snapinst || return 1
    return 255
}

depends() {
    echo btrfs
}

install() {
    inst_binary snapinst
    inst_hook pre-mount 90 "$moddir/snapinst-boot.sh"
}
