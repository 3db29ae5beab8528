"""bodyage's resources, installed as the package ``bodyage_resources``: shipped models
(``models/<name>/model.json`` + weights), shipped atlases, colour maps and window presets the
viewer reads, the application icon and desktop entry, default configurations.

Code finds them through :mod:`bodyage_core.resources`, never by a path relative to a module.
"""
