from setuptools import find_packages, setup

# twisted/plugins has no __init__.py (twistd finds plugins on every sys.path
# entry), so it is listed by hand for the wheel to carry it.
setup(packages=find_packages(include=["bpctunnel", "bpctunnel.*"]) + ["twisted.plugins"])
