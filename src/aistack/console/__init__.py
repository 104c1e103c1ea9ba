"""The web console: static HTML, CSS and JavaScript modules served at `/` (api/console.py); no build step."""
