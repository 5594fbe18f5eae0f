#!/bin/sh
# Installed by examples/hello/plan.json: prints the greeting configured in /etc/hello.conf.
greeting=$(sed -n 's/^greeting=//p' /etc/hello.conf)
echo "${greeting:-hello}, world"
