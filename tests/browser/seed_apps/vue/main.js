// Mounts the seed's component as it is.
import { createApp } from 'vue';
import TaskMonitor from './TaskMonitor.vue';

createApp(TaskMonitor).mount('#app');
