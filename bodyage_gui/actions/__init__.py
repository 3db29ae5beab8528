"""The viewer's user actions as small objects, one module each (FSLeyes keeps them in
``fsleyes/actions/``): opening files, folders and workspaces (``files``), drag and drop
(``drop``), recent files (``recent``), sessions (``session``), screenshots (``screenshot``),
the shortcuts table (``shortcuts``), layout keys and maximising a view (``layout``). The main
window builds them and puts them in its menus; each keeps its own logic.
"""
