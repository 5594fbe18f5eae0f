# -*- coding: utf-8 -*-
# Copyright: snapinst developers
# MIT License (see https://opensource.org/licenses/MIT)
"""A stand-in for the get-pip.py that ansible-test downloads from ci-files.testing.ansible.com (a host the test
machines cannot reach) to put pip into the virtual environments of its sanity tests: pip from Python's own
ensurepip, then the packages asked for (pip at the version ansible-test pins, ...) from the package index."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import subprocess
import sys

subprocess.check_call([sys.executable, "-m", "ensurepip", "--default-pip"])
subprocess.check_call([sys.executable, "-m", "pip", "install", "--disable-pip-version-check", "--quiet"]
                      + [a for a in sys.argv[1:] if a != "--disable-pip-version-check"])
