# Included by cpack once per generator (CPACK_PROJECT_CONFIG_FILE).
# Each package's Description: starts with its own summary line (CPACK_DEBIAN_<COMPONENT>_
# DESCRIPTION, CPACK_RPM_<COMPONENT>_PACKAGE_SUMMARY). CPackDeb would put the project's
# one-line description (CPACK_PACKAGE_DESCRIPTION_SUMMARY, from project()) above each of
# them as well, giving every deb the same summary; without it, it does not.
unset(CPACK_PACKAGE_DESCRIPTION_SUMMARY)
