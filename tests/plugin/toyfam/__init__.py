"""toyfam: a protocol family that lives outside posterm, to prove the plug-in promise.

It registers itself through the ``posterm.protocols`` entry point (the tests write the
``toyfam-0.1.dist-info`` that says so) and brings its own wire contract (:mod:`.wire`),
sans-IO link (:mod:`.link`), ECR driver (:mod:`.ecr`), emulator front (:mod:`.front`) and
record observer (:mod:`.record`); :mod:`.family` puts them together. Nothing in posterm
names it. Imports inside the package are relative, so it works as ``toyfam`` (how posterm
loads it) and under the tests' package path alike.
"""
