// Mounts the seed's component as it is, with no StrictMode (the seed does not use it).
import React from 'react';
import { createRoot } from 'react-dom/client';
import TaskMonitor from './TaskMonitor.jsx';

createRoot(document.getElementById('root')).render(<TaskMonitor />);
