# shellcheck shell=bash
# Debian's chromium and chromium-driver for the dashboard's browser tests (sourced by scripts/test).
# The tests use exactly these two files (tests/bridge/dashboard/browser.py); Selenium never
# downloads a browser or a driver.

BROWSER_PACKAGES=(chromium chromium-driver)
CHROMIUM_BIN=/usr/bin/chromium
CHROMEDRIVER_BIN=/usr/bin/chromedriver

ensure_browser() {
  if [ -x "$CHROMIUM_BIN" ] && [ -x "$CHROMEDRIVER_BIN" ]; then return 0; fi
  local as=()
  if [ "$(id -u)" != "0" ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
      as=(sudo -n)
    else
      echo "scripts/browser.sh: $CHROMIUM_BIN or $CHROMEDRIVER_BIN is missing and this user can neither" \
        "install packages nor sudo without a password; run as root: apt-get install -y" \
        "${BROWSER_PACKAGES[*]} (the browser tests fail until then)" >&2
      return 0
    fi
  fi
  echo "scripts/browser.sh: installing Debian's ${BROWSER_PACKAGES[*]} for the browser tests" >&2
  if ! { "${as[@]}" apt-get update -qq \
      && "${as[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq "${BROWSER_PACKAGES[@]}" >/dev/null; }; then
    echo "scripts/browser.sh: apt-get could not install ${BROWSER_PACKAGES[*]}" \
      "(the browser tests fail until they are installed)" >&2
  fi
}
