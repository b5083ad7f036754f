"""Packet captures in network namespaces, and assertions on what they hold.

- :mod:`testbed.capture.namespace` - :class:`Capture`: tcpdump on every matching interface
  of one netns, late interfaces included.
- :mod:`testbed.capture.group` - :class:`CaptureGroup`: several netns, one run directory.
- :mod:`testbed.capture.fixture` - :func:`capture_fixture` for pytest.
- :mod:`testbed.capture.command` - ``calicolab capture start|stop|status``.
- :mod:`testbed.capture.tcpdump`, :mod:`testbed.capture.links`,
  :mod:`testbed.capture.pcapfile`, :mod:`testbed.capture.errors` - one tcpdump, the
  netns's link events, complete pcap files, the error type.
- :mod:`testbed.capture.pcapassert` - read a pcap and assert on what was seen.
"""
