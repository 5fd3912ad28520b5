"""What the tests, the benchmarks and the demo share, imported as ``tests.support.*``.

- :mod:`.pki`: keys, certificate chains, and the bundles built from them;
- :mod:`.site`: certbot-shaped config dirs made by hand, running the deploy
  hook on them, disk snapshots;
- :mod:`.users`: running a command as another uid (``setpriv``), the outsider uid;
- :mod:`.procs`: the one bounded poll and the one stop-by-PID;
- :mod:`.testbed`: a real pebble and a private certbot;
- :mod:`.daemons`: real Postfix, HAProxy, nginx and Dovecot in the foreground;
- :mod:`.watcher`: the exposure watcher, run as the outsider;
- :mod:`.figures`: figures a test reports at the end of the run.

Nothing here mocks what a test checks: keys are real, the certbot and pebble
are the real programs, users and groups are real ids.
"""
